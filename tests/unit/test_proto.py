"""The committed generated protobuf code must match the .proto files."""

from __future__ import annotations

from pathlib import Path

from codegen_ray.proto import generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = tmp_path / "codegen_ray" / "proto"
    committed = generate.PROTO_DIR
    names = sorted(p.name for p in fresh.iterdir())
    assert names, "protoc generated nothing"
    for name in names:
        assert (committed / name).read_text() == (fresh / name).read_text(), (
            f"{name} is stale: run `python -m codegen_ray.proto.generate` and commit"
        )

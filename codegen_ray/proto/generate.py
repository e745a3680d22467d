"""Regenerate the protobuf and gRPC modules: ``python -m codegen_ray.proto.generate``.

The generated files are committed; ``tests/unit/test_proto.py`` fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTOS = sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path = REPO_ROOT) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in PROTOS:
        rel = proto.relative_to(REPO_ROOT)
        args = [
            "protoc",
            f"-I{REPO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(rel),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {rel}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)

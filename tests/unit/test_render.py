from __future__ import annotations

from codegen_ray.protoconv import from_struct, to_struct
from codegen_ray.render import render_text


def test_run_text_shows_stderr_and_exit_code_only_when_they_matter() -> None:
    ok = {"stdout": "hi\n", "stderr": "", "exit_code": 0, "timed_out": False, "truncated": False}
    assert render_text("run.python", ok) == "hi\n"
    failed = {**ok, "stderr": "boom", "exit_code": 1}
    text = render_text("run.python", failed)
    assert "boom" in text and "exit code 1" in text


def test_run_text_explains_timeouts_and_truncation() -> None:
    result = {"stdout": "x", "stderr": "", "exit_code": -15, "timed_out": True,
              "truncated": True, "duration_ms": 1000}
    text = render_text("run.python", result)
    assert "timed out" in text and "truncated" in text


def test_struct_round_trip_restores_integers() -> None:
    data = {"exit_code": 0, "size": 2**40, "ratio": 0.5, "nested": [{"n": 3}], "s": "x"}
    back = from_struct(to_struct(data))
    assert back == data
    assert isinstance(back["exit_code"], int) and isinstance(back["nested"][0]["n"], int)

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
    result = {
        "stdout": "x",
        "stderr": "",
        "exit_code": -15,
        "timed_out": True,
        "truncated": True,
        "duration_ms": 1000,
    }
    text = render_text("run.python", result)
    assert "timed out" in text and "truncated" in text


def test_struct_round_trip_restores_integers() -> None:
    data = {"exit_code": 0, "size": 2**40, "ratio": 0.5, "nested": [{"n": 3}], "s": "x"}
    back = from_struct(to_struct(data))
    assert back == data
    assert isinstance(back["exit_code"], int) and isinstance(back["nested"][0]["n"], int)


def test_kernel_text_shows_output_value_error_and_notes() -> None:
    result = {
        "stdout": "printed\n",
        "stderr": "",
        "result": None,
        "outputs": [],
        "error": {
            "ename": "ZeroDivisionError",
            "evalue": "division by zero",
            "traceback": [
                "-----",
                "Cell In[2], line 1\n----> 1 1/0",
                "ZeroDivisionError: division by zero",
            ],
        },
        "message": "",
        "state_lost": False,
        "timed_out": False,
    }
    text = render_text("kernel.execute", result)
    assert text.startswith("printed\n")
    assert "[error] ZeroDivisionError: division by zero\n" in text
    assert "----> 1 1/0" in text and text.count("division by zero") == 1
    value = render_text("kernel.execute", {"stdout": "", "result": "2", "outputs": []})
    assert value == "2"
    lost = render_text("kernel.execute", {"stdout": "", "state_lost": True, "outputs": []})
    assert "state was lost" in lost


def test_run_text_names_changed_files() -> None:
    result = {"stdout": "", "stderr": "", "exit_code": 0, "changed_files": ["a.txt", "b/c.png"]}
    assert render_text("run.python", result) == "[files created or changed: a.txt, b/c.png]"

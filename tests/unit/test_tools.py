from __future__ import annotations

import pickle

import pytest

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.tools import TOOLS, get_tool, parse_args


def test_every_tool_publishes_object_schemas() -> None:
    for spec in TOOLS.values():
        assert spec.input_schema()["type"] == "object", spec.name
        assert spec.output_schema()["type"] == "object", spec.name
        assert spec.description


def test_design_tool_names_are_registered() -> None:
    expected = {
        "echo",
        "fs.read",
        "fs.write",
        "fs.list",
        "fs.delete",
        "run.python",
        "pkg.install",
        "pkg.list",
        "task.get_status",
        "task.get_result",
        "task.cancel",
    }
    assert expected <= set(TOOLS)


def test_unknown_tool_names_the_available_ones() -> None:
    with pytest.raises(CodegenError) as err:
        get_tool("fs.reed")
    assert err.value.code == ErrorCode.NOT_FOUND
    assert "fs.read" in err.value.message


@pytest.mark.parametrize(
    ("tool", "args", "fragment"),
    [
        ("fs.read", {}, "path: Field required"),
        ("fs.read", {"path": "a", "bogus": 1}, "bogus: unknown argument"),
        ("fs.read", {"path": "a", "offset": -1}, "offset"),
        ("fs.read", {"path": "a", "encoding": "latin-1"}, "encoding"),
        ("run.python", {"code": "1", "file": "a.py"}, "exactly one of code, file or module"),
        ("run.python", {}, "exactly one"),
        ("run.python", {"code": "1", "timeout_seconds": 0}, "timeout_seconds"),
        ("pkg.install", {"packages": []}, "at least one package"),
        ("echo", {"message": 5}, "message"),
    ],
)
def test_bad_arguments_read_like_instructions(tool: str, args: dict, fragment: str) -> None:
    with pytest.raises(CodegenError) as err:
        parse_args(get_tool(tool), args)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert fragment in err.value.message
    assert "Traceback" not in err.value.message


def test_packages_accept_a_space_separated_string() -> None:
    args = parse_args(get_tool("pkg.install"), {"packages": "six  iniconfig==2.0.0"})
    assert args.packages == ["six", "iniconfig==2.0.0"]  # type: ignore[attr-defined]


def test_errors_survive_pickling_as_ray_does() -> None:
    error = CodegenError(ErrorCode.UNAVAILABLE, "node lost", retriable=True)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.code, clone.message, clone.retriable) == (
        ErrorCode.UNAVAILABLE,
        "node lost",
        True,
    )
    assert str(clone) == "UNAVAILABLE: node lost"


def test_pkg_install_failure_is_a_tool_error() -> None:
    spec = get_tool("pkg.install")
    assert spec.is_failure({"exit_code": 1})
    assert not spec.is_failure({"exit_code": 0})
    assert not get_tool("run.python").is_failure({"exit_code": 1})

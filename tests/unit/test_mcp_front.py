"""The MCP front's schemas and result shapes, without a gateway."""

from __future__ import annotations

import jsonschema
import mcp_types as types

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.session import SessionInfo
from codegen_ray.tools import TOOLS, SessionInfoResult
from gateway.mcp_server import (
    ToolOutcome,
    error_result,
    mcp_input_schema,
    mcp_output_schema,
    registry_tools,
    tool_result,
)


def test_session_info_result_mirrors_session_info() -> None:
    assert list(SessionInfoResult.model_fields) == list(SessionInfo.model_fields)


def test_schemas_are_valid_and_take_a_task_id() -> None:
    for tool in registry_tools():
        schema = mcp_input_schema(tool)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        assert ("session_id" in schema["properties"]) == tool.requires_session
        output = mcp_output_schema(tool)
        assert output is not None and output["type"] == "object"
        validator = jsonschema.Draft202012Validator(output)
        if tool.requires_session:
            validator.validate({"task_id": "abc"})
    run = next(t for t in registry_tools() if t.name == "run.python")
    validator = jsonschema.Draft202012Validator(mcp_output_schema(run))
    validator.validate({"stdout": "", "stderr": "", "exit_code": 0, "duration_ms": 1})
    assert not validator.is_valid({"stdout": 1})
    assert set(TOOLS) == {t.name for t in registry_tools()}


def test_images_and_errors() -> None:
    result = tool_result(
        "artifact.get",
        {"path": "a.PNG"},
        ToolOutcome({"path": "a.PNG", "data": "iVBO", "content_type": "image/png",
                     "size_bytes": 3}),
        "s1",
        "",
    )
    assert [c.type for c in result.content] == ["text", "image"]
    assert result.meta == {"codegen-ray/session_id": "s1"}
    partial = tool_result(
        "fs.read", {"path": "a.png", "encoding": "base64", "offset": 5},
        ToolOutcome({"contents": "AAAA", "size_bytes": 9, "encoding": "base64"}), "s1", "",
    )
    assert [c.type for c in partial.content] == ["text"]

    error = error_result(CodegenError(ErrorCode.DEADLINE_EXCEEDED, "run timed out"))
    assert error.is_error and isinstance(error.content[0], types.TextContent)
    assert error.content[0].text.startswith("DEADLINE_EXCEEDED: run timed out\nRetry with")

"""The MCP front's schemas and result shapes, without a gateway."""

from __future__ import annotations

import jsonschema
import mcp_types as types

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.tools import TOOLS, ArtifactGetArgs
from gateway.mcp_server import (
    ToolOutcome,
    error_result,
    mcp_input_schema,
    mcp_output_schema,
    registry_tools,
    tool_result,
)


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
        ToolOutcome(
            {"path": "a.PNG", "data": "iVBO", "content_type": "image/png", "size_bytes": 3}
        ),
        "s1",
        "",
    )
    assert [c.type for c in result.content] == ["text", "image"]
    assert result.meta == {"codegen-ray/session_id": "s1"}
    partial = tool_result(
        "fs.read",
        {"path": "a.png", "encoding": "base64", "offset": 5},
        ToolOutcome({"contents": "AAAA", "size_bytes": 9, "encoding": "base64"}),
        "s1",
        "",
    )
    assert [c.type for c in partial.content] == ["text"]

    error = error_result(CodegenError(ErrorCode.DEADLINE_EXCEEDED, "run timed out"))
    assert error.is_error and isinstance(error.content[0], types.TextContent)
    assert error.content[0].text.startswith("DEADLINE_EXCEEDED: run timed out\nRetry with")


def test_kernel_outputs_become_image_and_text_content() -> None:
    outcome = ToolOutcome(
        {
            "stdout": "hi\n",
            "result": "42",
            "execution_count": 3,
            "outputs": [
                {"mime_type": "image/png", "data": "iVBORw0K"},
                {"mime_type": "image/jpeg", "data": "/9j/"},
                {"mime_type": "text/html", "data": "<table></table>"},
                {"mime_type": "text/markdown", "data": "# title"},
                {"mime_type": "image/svg+xml", "data": "<svg/>"},
            ],
            "timed_out": True,
            "state_lost": True,
            "message": "The code ran past its 1s limit and ignored the interrupt, so the kernel "
            "was restarted: variables and imports from earlier calls are gone.",
        }
    )
    result = tool_result("kernel.execute", {"code": "x"}, outcome, "s1", "")
    kinds = [(c.type, getattr(c, "mime_type", None)) for c in result.content]
    assert kinds == [
        ("text", None),
        ("image", "image/png"),
        ("image", "image/jpeg"),
        ("text", None),
        ("text", None),
        ("text", None),
    ]
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert text.text.startswith("hi\n\n42\n")
    assert "ignored the interrupt" in text.text and "are gone" in text.text
    assert [c.text for c in result.content[3:] if isinstance(c, types.TextContent)] == [
        "<table></table>",
        "# title",
        "<svg/>",
    ]


def test_run_python_lists_changed_files_as_resource_links() -> None:
    outcome = ToolOutcome(
        {
            "stdout": "",
            "stderr": "",
            "exit_code": 0,
            "duration_ms": 5,
            "changed_files": ["out/plot.png", "a b.csv"],
        }
    )
    result = tool_result("run.python", {"code": "x"}, outcome, "s1", "")
    links = [c for c in result.content if isinstance(c, types.ResourceLink)]
    assert [(link.uri, link.name, link.mime_type) for link in links] == [
        ("artifact://out/plot.png", "out/plot.png", "image/png"),
        ("artifact://a%20b.csv", "a b.csv", "text/csv"),
    ]
    # The link's URI is an artifact id that artifact.get takes.
    for link in links:
        args = ArtifactGetArgs(artifact_id=link.uri)
        assert args.workspace_path == link.name
    assert ArtifactGetArgs(artifact_id="plain/path.txt").workspace_path == "plain/path.txt"


def test_checkpoint_tools() -> None:
    assert TOOLS["session.checkpoint"].requires_session
    assert not TOOLS["session.restore"].requires_session
    summary = {
        "checkpoint_id": "c1",
        "session_id": "s1",
        "name": "",
        "created_ms": 1,
        "file_count": 2,
        "total_bytes": 10,
        "packages": [],
    }
    result = tool_result("session.checkpoint", {}, ToolOutcome(summary), "s1", "")
    assert result.structured_content == summary
    assert "checkpoint c1: 2 files" in result.content[0].text  # type: ignore[union-attr]

"""A client generated in the test from the SEP-1352 service definition lists and runs our tools."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import json_format

from codegen_ray.proto import codegen_pb2, codegen_pb2_grpc, generate


@pytest.fixture(scope="module")
def sep1352(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """Compile our copy of model_context_protocol.Mcp into a fresh package, as a client would."""
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("sep1352")
    source = out / "proto_src"
    source.mkdir()
    (source / "mcp_sep1352.proto").write_bytes((generate.PROTO_DIR / "mcp_grpc.proto").read_bytes())
    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{source}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(source / "mcp_sep1352.proto"),
        ]
    )
    assert status == 0
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("mcp_sep1352_pb2"),
            importlib.import_module("mcp_sep1352_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


def test_generated_client_lists_and_runs_tools(sep1352, gateway) -> None:  # type: ignore[no-untyped-def]
    pb, pb_grpc = sep1352
    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.McpStub(channel)
        tools = {t.name: t for t in stub.ListTools(pb.ListToolsRequest(), timeout=60).tools}
        assert {"run.python", "fs.write", "echo"} <= set(tools)
        schema = json_format.MessageToDict(tools["run.python"].input_schema)
        assert "code" in schema["properties"]

        request = pb.CallToolRequest(request=pb.CallToolRequest.Request(name="run.python"))
        request.request.arguments.update({"code": "print(6 * 7)"})
        response = stub.CallTool(request, timeout=120)
        assert not response.is_error
        assert response.content[0].text.text.strip() == "42"
        structured = json_format.MessageToDict(response.structured_content)
        assert structured["stdout"] == "42\n" and structured["exit_code"] == 0
        session_id = json_format.MessageToDict(response.common.metadata)["session_id"]

        # The session comes back in the metadata; pass it to keep working in it.
        write = pb.CallToolRequest(request=pb.CallToolRequest.Request(name="fs.write"))
        write.request.arguments.update({"path": "x.txt", "contents": "kept"})
        write.common.metadata.update({"session_id": session_id})
        assert not stub.CallTool(write, timeout=60).is_error
        read = pb.CallToolRequest(request=pb.CallToolRequest.Request(name="fs.read"))
        read.request.arguments.update({"path": "x.txt", "session_id": session_id})
        assert stub.CallTool(read, timeout=60).content[0].text.text == "kept"

        bad = pb.CallToolRequest(request=pb.CallToolRequest.Request(name="fs.read"))
        bad.request.arguments.update({"path": "../../etc/passwd", "session_id": session_id})
        refused = stub.CallTool(bad, timeout=60)
        assert refused.is_error
        assert "PERMISSION_DENIED" in refused.content[0].text.text

        # The session is ours: end it through codegen.v1.
        codegen_pb2_grpc.SessionsStub(channel).Destroy(
            codegen_pb2.SessionRef(session_id=session_id), timeout=60
        )

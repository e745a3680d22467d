"""MCP over gRPC (SEP-1352's ``model_context_protocol.Mcp``), onto the same tool registry.

A unary exchange has no connection, so the session travels in the request's
``common.metadata.session_id`` (or a ``session_id`` argument); without one, a session
tool gets a new session, whose id comes back in the response's ``common.metadata``.
"""

from __future__ import annotations

import base64
from typing import Any

from mcp import types

from codegen_ray.errors import CodegenError
from codegen_ray.proto import mcp_grpc_pb2 as pb
from codegen_ray.proto import mcp_grpc_pb2_grpc as pb_grpc
from codegen_ray.protoconv import from_struct, to_struct
from gateway.mcp_server import ToolBackend, error_result, mcp_tool, tool_result

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Mcp"].full_name


class McpGrpcService(pb_grpc.McpServicer):
    def __init__(self, backend: ToolBackend) -> None:
        self.backend = backend

    async def ListTools(self, request: pb.ListToolsRequest, context: Any) -> pb.ListToolsResponse:
        tools = []
        for info in await self.backend.list_tools():
            tool = mcp_tool(info)
            hints = tool.annotations
            tools.append(
                pb.Tool(
                    name=tool.name,
                    description=tool.description or "",
                    input_schema=to_struct(tool.input_schema),
                    output_schema=to_struct(tool.output_schema),
                    annotations=pb.ToolAnnotations(
                        read_only_hint=bool(hints and hints.read_only_hint)
                    ),
                )
            )
        return pb.ListToolsResponse(tools=tools)

    async def CallTool(self, request: pb.CallToolRequest, context: Any) -> pb.CallToolResponse:
        name = request.request.name
        arguments = from_struct(request.request.arguments)
        metadata = from_struct(request.common.metadata)
        session_id = str(arguments.pop("session_id", "") or metadata.get("session_id", ""))
        run_async = bool(arguments.pop("async", False))
        try:
            tools = {t.name: t for t in await self.backend.list_tools()}
            if name in tools and tools[name].requires_session and not session_id:
                session_id = await self.backend.create_session()
            outcome = await self.backend.call(name, arguments, session_id, run_async=run_async)
            result = tool_result(name, arguments, outcome, session_id, note="")
        except CodegenError as exc:
            result = error_result(exc)
        response = to_proto(result)
        if session_id:
            response.common.metadata.update({"session_id": session_id})
        return response


def to_proto(result: types.CallToolResult) -> pb.CallToolResponse:
    content = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            content.append(pb.CallToolResponse.Content(text=pb.TextContent(text=item.text)))
        elif isinstance(item, types.ImageContent):
            image = pb.ImageContent(data=base64.b64decode(item.data), mime_type=item.mime_type)
            content.append(pb.CallToolResponse.Content(image=image))
        elif isinstance(item, types.ResourceLink):
            link = pb.Resource(uri=item.uri, name=item.name, mime_type=item.mime_type or "")
            content.append(pb.CallToolResponse.Content(resource_link=link))
    response = pb.CallToolResponse(content=content, is_error=bool(result.is_error))
    if result.structured_content is not None:
        response.structured_content.update(result.structured_content)
    return response

"""A ``ToolBackend`` over the gateway's gRPC API, for MCP served outside the gateway process."""

from __future__ import annotations

from typing import Any

from codegen_ray.client import AsyncClient, ToolResponse
from codegen_ray.errors import CodegenError, ErrorCode
from gateway.mcp_server import EventSink, McpFront, ToolBackend, ToolInfo, ToolOutcome


class GrpcBackend(ToolBackend):
    """The gateway's ``codegen.v1`` API as a ``ToolBackend``."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def list_tools(self) -> list[ToolInfo]:
        return [
            ToolInfo(
                t["name"],
                t["description"],
                t["input_schema"],
                t["output_schema"],
                t["requires_session"],
                t["read_only"],
            )
            for t in await self.client.list_tools()
        ]

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        session_id: str = "",
        *,
        run_async: bool = False,
        on_event: EventSink | None = None,
    ) -> ToolOutcome:
        if on_event is None or run_async:
            response = await self.client.call(
                name, arguments, session_id=session_id, run_async=run_async
            )
            return _outcome(response)
        # Cancelling this task cancels the stream; the gateway then kills the process.
        async for event in self.client.stream(name, arguments, session_id=session_id):
            kind = event.WhichOneof("event")
            if kind == "output":
                await on_event(
                    {"type": "output", "stream": event.output.stream, "data": event.output.data}
                )
            elif kind == "progress":
                await on_event({"type": "progress", "message": event.progress.message})
            elif kind == "result":
                return _outcome(ToolResponse.from_proto(event.result))
        raise CodegenError(ErrorCode.INTERNAL, f"{name} ended without a result", retriable=True)

    async def create_session(self) -> str:
        return str((await self.client.create_session())["session_id"])


def _outcome(response: ToolResponse) -> ToolOutcome:
    if response.task_id:
        return ToolOutcome(task_id=response.task_id)
    return ToolOutcome(response.structured, is_error=response.is_error)


async def serve_stdio(target: str) -> None:
    """MCP over this process's stdin/stdout, onto the gateway at ``target``."""
    from mcp.server.stdio import stdio_server

    async with AsyncClient(target) as client:
        front = McpFront(GrpcBackend(client))
        async with stdio_server() as (read, write):
            await front.server.run(read, write, front.server.create_initialization_options())

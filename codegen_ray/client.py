"""Python SDK for the gateway's gRPC API: ``AsyncClient``, and ``Client`` for sync code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.proto import codegen_pb2 as pb
from codegen_ray.proto import codegen_pb2_grpc as pb_grpc
from codegen_ray.protoconv import from_struct, message_to_dict, session_from_proto, to_struct

T = TypeVar("T")
DEFAULT_TARGET = "localhost:50051"


@dataclass
class ToolResponse:
    structured: dict[str, Any]
    text: str = ""
    is_error: bool = False
    task_id: str = ""
    content: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_proto(cls, response: pb.CallToolResponse) -> ToolResponse:
        content = [message_to_dict(c) for c in response.content]
        return cls(
            structured=from_struct(response.structured),
            text="\n".join(c.text for c in response.content if c.type == "text"),
            is_error=response.is_error,
            task_id=response.task_id,
            content=content,
        )


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> CodegenError:
    metadata = dict(exc.trailing_metadata() or ())  # type: ignore[union-attr]
    code_name = metadata.get("codegen-error-code") or exc.code().name  # type: ignore[union-attr]
    try:
        code = ErrorCode(code_name)
    except ValueError:
        code = ErrorCode.INTERNAL
    retriable = metadata.get("codegen-retriable") == "true" or code == ErrorCode.UNAVAILABLE
    return CodegenError(code, exc.details() or code_name, retriable)  # type: ignore[union-attr]


class AsyncClient:
    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self.sessions = pb_grpc.SessionsStub(self.channel)
        self.tools = pb_grpc.ToolsStub(self.channel)
        self.cluster = pb_grpc.ClusterStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _rpc(self, call: Any, request: Any) -> Any:
        try:
            return await call(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    # --- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        *,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        limits: dict[str, Any] | None = None,
        node: str = "",
    ) -> dict[str, Any]:
        request = pb.CreateSessionRequest(
            env=env or {}, metadata=metadata or {}, limits=to_struct(limits), node=node
        )
        return session_from_proto(await self._rpc(self.sessions.Create, request))

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return session_from_proto(
            await self._rpc(self.sessions.Get, pb.SessionRef(session_id=session_id))
        )

    async def list_sessions(self) -> list[dict[str, Any]]:
        response = await self._rpc(self.sessions.List, pb.ListSessionsRequest())
        return [session_from_proto(s) for s in response.sessions]

    async def destroy_session(self, session_id: str) -> bool:
        response = await self._rpc(self.sessions.Destroy, pb.SessionRef(session_id=session_id))
        return bool(response.destroyed)

    async def checkpoint(self, session_id: str, name: str = "") -> dict[str, Any]:
        request = pb.CheckpointRequest(session_id=session_id, name=name)
        return message_to_dict(await self._rpc(self.sessions.Checkpoint, request))

    async def restore(
        self, checkpoint_id: str, *, node: str = "", new_session: bool = False
    ) -> dict[str, Any]:
        request = pb.RestoreRequest(checkpoint_id=checkpoint_id, node=node, new_session=new_session)
        return session_from_proto(await self._rpc(self.sessions.Restore, request))

    async def list_checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        response = await self._rpc(
            self.sessions.ListCheckpoints, pb.SessionRef(session_id=session_id)
        )
        return [message_to_dict(c) for c in response.checkpoints]

    async def update_metadata(
        self, session_id: str, metadata: dict[str, str], *, replace: bool = False
    ) -> dict[str, str]:
        request = pb.UpdateMetadataRequest(
            session_id=session_id, metadata=metadata, replace=replace
        )
        return dict((await self._rpc(self.sessions.UpdateMetadata, request)).metadata)

    async def status(self) -> dict[str, Any]:
        return message_to_dict(await self._rpc(self.cluster.GetStatus, pb.StatusRequest()))

    # --- tools -----------------------------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        response = await self._rpc(self.tools.ListTools, pb.ListToolsRequest())
        return [
            {
                "name": t.name,
                "description": t.description,
                "input_schema": from_struct(t.input_schema),
                "output_schema": from_struct(t.output_schema),
                "requires_session": t.requires_session,
                "read_only": t.read_only,
            }
            for t in response.tools
        ]

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        session_id: str = "",
        run_async: bool = False,
    ) -> ToolResponse:
        request = pb.CallToolRequest(
            name=tool, arguments=to_struct(arguments), session_id=session_id, **{"async": run_async}
        )
        return ToolResponse.from_proto(await self._rpc(self.tools.CallTool, request))

    async def stream(
        self, tool: str, arguments: dict[str, Any] | None = None, *, session_id: str = ""
    ) -> AsyncIterator[pb.ToolEvent]:
        """Yield ToolEvents (output chunks, progress), the last one carrying the result."""
        request = pb.CallToolRequest(
            name=tool, arguments=to_struct(arguments), session_id=session_id
        )
        call = self.tools.StreamTool(request, timeout=self.timeout)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return message_to_dict(await self._rpc(self.tools.GetTask, pb.TaskRef(task_id=task_id)))

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        return message_to_dict(await self._rpc(self.tools.CancelTask, pb.TaskRef(task_id=task_id)))


class Client:
    """Blocking facade over ``AsyncClient`` (its own event loop on a daemon thread)."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async = self._run(_make_async_client(target, timeout))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._async, name)
        if not asyncio.iscoroutinefunction(method):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))


async def _make_async_client(target: str, timeout: float | None) -> AsyncClient:  # noqa: ASYNC109
    return AsyncClient(target, timeout=timeout)

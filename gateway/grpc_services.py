"""The codegen.v1 gRPC services: thin translations onto the router and the dispatcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from codegen_ray import __version__
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.proto import codegen_pb2 as pb
from codegen_ray.proto import codegen_pb2_grpc as pb_grpc
from codegen_ray.protoconv import from_struct, session_to_proto, to_struct
from codegen_ray.render import render_text
from codegen_ray.session import Event, SessionSpec
from codegen_ray.tools import TOOLS, ToolOutcome
from gateway.dispatch import Dispatcher
from gateway.driver import RayConnection
from gateway.errors import abort

log = logging.getLogger(__name__)
R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


def _errors_to_status(handler: Handler[R]) -> Handler[R]:
    """One place where a CodegenError becomes the matching gRPC status."""

    @wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except CodegenError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # a bug of ours: log it whole, tell the client no more than that
            log.exception("%s failed", handler.__name__)
            error = CodegenError(
                ErrorCode.INTERNAL, f"{handler.__name__} failed inside the gateway (see its log)"
            )
            await abort(context, error)
            raise

    return wrapper


def tool_response(tool: str, outcome: ToolOutcome) -> pb.CallToolResponse:
    if outcome.task_id:
        return pb.CallToolResponse(
            task_id=outcome.task_id,
            content=[pb.Content(type="text", text=f"started task {outcome.task_id}")],
        )
    result = outcome.result or {}
    return pb.CallToolResponse(
        content=[pb.Content(type="text", text=render_text(tool, result))],
        structured=to_struct(result),
        is_error=outcome.is_error,
    )


class SessionsService(pb_grpc.SessionsServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.router = dispatcher.router

    @_errors_to_status
    async def Create(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        spec = SessionSpec(
            env=dict(request.env),
            metadata=dict(request.metadata),
            limits=from_struct(request.limits),
        )
        return session_to_proto(await self.router.create(spec, request.node))

    @_errors_to_status
    async def Get(self, request: pb.SessionRef, context: Any) -> pb.Session:
        return session_to_proto(await self.router.get(request.session_id))

    @_errors_to_status
    async def List(self, request: pb.ListSessionsRequest, context: Any) -> pb.ListSessionsResponse:
        infos = await self.router.list()
        infos.sort(key=lambda i: i["created_ms"])
        return pb.ListSessionsResponse(sessions=[session_to_proto(i) for i in infos])

    @_errors_to_status
    async def Destroy(self, request: pb.SessionRef, context: Any) -> pb.DestroySessionResponse:
        await self.router.destroy(request.session_id)
        return pb.DestroySessionResponse(destroyed=True)

    @_errors_to_status
    async def Checkpoint(self, request: pb.CheckpointRequest, context: Any) -> pb.CheckpointInfo:
        return pb.CheckpointInfo(**await self.router.checkpoint(request.session_id, request.name))

    @_errors_to_status
    async def Restore(self, request: pb.RestoreRequest, context: Any) -> pb.Session:
        info = await self.router.restore(request.checkpoint_id, request.node, request.new_session)
        return session_to_proto(info)

    @_errors_to_status
    async def ListCheckpoints(
        self, request: pb.SessionRef, context: Any
    ) -> pb.ListCheckpointsResponse:
        summaries = await self.router.list_checkpoints(request.session_id)
        return pb.ListCheckpointsResponse(checkpoints=[pb.CheckpointInfo(**s) for s in summaries])

    @_errors_to_status
    async def GetMetadata(self, request: pb.SessionRef, context: Any) -> pb.Metadata:
        info = await self.router.get(request.session_id)
        return pb.Metadata(session_id=request.session_id, metadata=info["metadata"])

    @_errors_to_status
    async def UpdateMetadata(self, request: pb.UpdateMetadataRequest, context: Any) -> pb.Metadata:
        merged = await self.router.update_metadata(
            request.session_id, dict(request.metadata), request.replace
        )
        return pb.Metadata(session_id=request.session_id, metadata=merged)


class ToolsService(pb_grpc.ToolsServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def ListTools(self, request: pb.ListToolsRequest, context: Any) -> pb.ListToolsResponse:
        return pb.ListToolsResponse(
            tools=[
                pb.ToolSpec(
                    name=spec.name,
                    description=spec.description,
                    input_schema=to_struct(spec.input_schema()),
                    output_schema=to_struct(spec.output_schema()),
                    requires_session=spec.requires_session,
                    read_only=spec.read_only,
                )
                for spec in TOOLS.values()
            ]
        )

    @_errors_to_status
    async def CallTool(self, request: pb.CallToolRequest, context: Any) -> pb.CallToolResponse:
        outcome = await self.dispatcher.call(
            request.name,
            from_struct(request.arguments),
            request.session_id,
            run_async=getattr(request, "async"),
        )
        return tool_response(request.name, outcome)

    async def StreamTool(
        self, request: pb.CallToolRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ToolEvent]:
        queue: asyncio.Queue[pb.ToolEvent | CodegenError | None] = asyncio.Queue()

        async def sink(event: Event) -> None:
            if event["type"] == "output":
                chunk = pb.OutputChunk(stream=event["stream"], data=event["data"])
                await queue.put(pb.ToolEvent(output=chunk))
            elif event["type"] == "progress":
                progress = pb.Progress(
                    message=event.get("message", ""),
                    progress=event.get("progress", 0.0),
                    total=event.get("total", 0.0),
                )
                await queue.put(pb.ToolEvent(progress=progress))

        async def run() -> None:
            try:
                outcome = await self.dispatcher.call(
                    request.name, from_struct(request.arguments), request.session_id, on_event=sink
                )
                await queue.put(pb.ToolEvent(result=tool_response(request.name, outcome)))
            except CodegenError as exc:
                await queue.put(exc)
            finally:
                await queue.put(None)

        worker = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, CodegenError):
                    await abort(context, item)
                yield item
        finally:
            if not worker.done():  # the client went away: the dispatcher kills the process
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)

    @_errors_to_status
    async def GetTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        return self._task(request.task_id)

    @_errors_to_status
    async def CancelTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        await self.dispatcher.tasks.cancel(request.task_id)
        return self._task(request.task_id)

    def _task(self, task_id: str) -> pb.Task:
        record = self.dispatcher.tasks.get(task_id)
        task = pb.Task(
            task_id=record.task_id,
            state=record.state,
            tool=record.tool,
            session_id=record.session_id,
            created_ms=record.created_ms,
            finished_ms=record.finished_ms,
        )
        if record.result is not None:
            task.result.CopyFrom(tool_response(record.tool, ToolOutcome(record.result)))
        elif record.error is not None:
            error = record.error
            task.result.CopyFrom(
                pb.CallToolResponse(
                    is_error=True,
                    content=[pb.Content(type="text", text=error.message)],
                    error=pb.Error(
                        code=error.code.value, message=error.message, retriable=error.retriable
                    ),
                )
            )
        return task


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, dispatcher: Dispatcher, connection: RayConnection) -> None:
        self.router = dispatcher.router
        self.connection = connection

    async def GetStatus(self, request: pb.StatusRequest, context: Any) -> pb.ClusterStatus:
        await self.router.refresh_nodes()
        nodes = [
            pb.NodeStatus(
                **{k: info[k] for k in pb.NodeStatus.DESCRIPTOR.fields_by_name if k in info}
            )
            for info in await self.router.worker_infos()
        ]
        return pb.ClusterStatus(
            ray_address=self.connection.address,
            dashboard_url=self.connection.dashboard_url,
            embedded=self.connection.embedded,
            nodes=nodes,
            sessions=len(self.router.sessions),
            version=__version__,
        )

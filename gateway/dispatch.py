"""The one entry point for tool calls, shared by the gRPC and MCP fronts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from codegen_ray.errors import CodegenError
from codegen_ray.session import Event
from codegen_ray.tools import (
    Args,
    CheckpointSummary,
    EchoArgs,
    SessionCheckpointArgs,
    SessionInfo,
    SessionRestoreArgs,
    TaskArgs,
    TaskCancelResult,
    ToolOutcome,
    get_tool,
    parse_args,
)
from gateway.metrics import GatewayMetrics
from gateway.router import SessionRouter
from gateway.tasks import TaskManager

EventSink = Callable[[Event], Awaitable[None]]
# Tools that name a session but are answered by the gateway, not inside the session.
SESSION_GATEWAY_TOOLS = frozenset({"session.info", "session.checkpoint"})


class Dispatcher:
    def __init__(self, router: SessionRouter, metrics: GatewayMetrics | None = None) -> None:
        self.router = router
        self.tasks = TaskManager(router.cancel)
        self.metrics = metrics or GatewayMetrics()

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        session_id: str = "",
        *,
        run_async: bool = False,
        on_event: EventSink | None = None,
    ) -> ToolOutcome:
        with self.metrics.tool_call(name) as counted:
            outcome = await self._call(name, arguments, session_id, run_async, on_event)
            if outcome.task_id:
                counted.skip()
            counted.finish(outcome.is_error)
        return outcome

    async def _call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        session_id: str,
        run_async: bool,
        on_event: EventSink | None,
    ) -> ToolOutcome:
        spec = get_tool(name)
        args = parse_args(spec, arguments)
        if not spec.requires_session:
            return ToolOutcome(await self._gateway_tool(name, args))
        self.router.check(session_id)  # fail fast on a missing or unknown session
        if name in SESSION_GATEWAY_TOOLS:
            return ToolOutcome(await self._session_gateway_tool(args, session_id))
        raw = args.model_dump(exclude_unset=True)
        call_id = uuid.uuid4().hex
        if run_async:
            work = self._counted_task(name, self.router.call(session_id, name, raw, call_id))
            record = self.tasks.start(name, session_id, call_id, work)
            return ToolOutcome(task_id=record.task_id)
        try:
            if on_event is None:
                result = await self.router.call(session_id, name, raw, call_id)
            else:
                result = await self._stream(session_id, name, raw, call_id, on_event)
        except asyncio.CancelledError:
            # The client went away or cancelled: kill the process, keep the session.
            await asyncio.shield(self.router.cancel(session_id, call_id))
            raise
        return ToolOutcome(result, is_error=spec.is_failure(result))

    async def _counted_task(self, name: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        with self.metrics.tool_call(name) as counted:
            result = await work
            counted.finish(get_tool(name).is_failure(result))
        return result

    async def _stream(
        self, session_id: str, name: str, raw: dict[str, Any], call_id: str, on_event: EventSink
    ) -> dict[str, Any]:
        async for event in self.router.stream(session_id, name, raw, call_id):
            if event["type"] == "result":
                return event["result"]
            if event["type"] == "error":
                raise CodegenError(**event["error"])
            await on_event(event)
        raise CodegenError("INTERNAL", f"{name} ended without a result", retriable=True)

    async def _gateway_tool(self, name: str, args: Any) -> dict[str, Any]:
        if isinstance(args, EchoArgs):
            return {"message": args.message}
        if isinstance(args, SessionRestoreArgs):
            info = await self.router.restore(args.checkpoint_id, new_session=args.new_session)
            return SessionInfo.model_validate(info).model_dump(mode="json")
        assert isinstance(args, TaskArgs)
        if name == "task.get_status":
            return self.tasks.get(args.task_id).status().model_dump(mode="json")
        if name == "task.get_result":
            return self.tasks.result(args.task_id)
        record = await self.tasks.cancel(args.task_id)
        return TaskCancelResult(
            task_id=record.task_id, cancelled=record.state == "cancelled", state=record.state
        ).model_dump(mode="json")

    async def _session_gateway_tool(self, args: Args, session_id: str) -> dict[str, Any]:
        if isinstance(args, SessionCheckpointArgs):
            summary = await self.router.checkpoint(session_id, args.name)
            return CheckpointSummary.model_validate(summary).model_dump(mode="json")
        return SessionInfo.model_validate(await self.router.get(session_id)).model_dump(mode="json")

"""Asynchronous tool calls: a task id at once, then status, result and cancel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from codegen_ray.errors import CodegenError, ErrorCode, not_found
from codegen_ray.session import now_ms
from codegen_ray.tools import TaskState, TaskStatus

MAX_FINISHED = 1000


@dataclass
class TaskRecord:
    task_id: str
    tool: str
    session_id: str
    call_id: str
    created_ms: int = field(default_factory=now_ms)
    finished_ms: int = 0
    state: TaskState = "pending"
    result: dict[str, Any] | None = None
    error: CodegenError | None = None
    runner: asyncio.Task[None] | None = None

    def status(self) -> TaskStatus:
        return TaskStatus(
            task_id=self.task_id,
            state=self.state,
            tool=self.tool,
            session_id=self.session_id,
            created_ms=self.created_ms,
            finished_ms=self.finished_ms,
            error=self.error.message if self.error else "",
        )


class TaskManager:
    def __init__(self, cancel_call: Callable[[str, str], Awaitable[bool]]) -> None:
        self._cancel_call = cancel_call
        self.tasks: dict[str, TaskRecord] = {}

    def start(
        self, tool: str, session_id: str, call_id: str, work: Awaitable[dict[str, Any]]
    ) -> TaskRecord:
        record = TaskRecord(uuid.uuid4().hex, tool, session_id, call_id)

        async def run() -> None:
            record.state = "running"
            try:
                record.result = await work
                record.state = "completed"
            except asyncio.CancelledError:
                record.state = "cancelled"
            except CodegenError as exc:
                record.error = exc
                record.state = "cancelled" if exc.code == ErrorCode.CANCELLED else "failed"
            finally:
                record.finished_ms = now_ms()
                self._trim()

        record.runner = asyncio.ensure_future(run())
        self.tasks[record.task_id] = record
        return record

    def get(self, task_id: str) -> TaskRecord:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise not_found(f"no task {task_id!r} (finished tasks are kept for a while)") from None

    def result(self, task_id: str) -> dict[str, Any]:
        record = self.get(task_id)
        if record.state in ("pending", "running"):
            raise CodegenError(
                ErrorCode.FAILED_PRECONDITION,
                f"task {task_id} is still {record.state}; poll task.get_status",
                retriable=True,
            )
        if record.error is not None:
            raise record.error
        if record.state == "cancelled":
            raise CodegenError(ErrorCode.CANCELLED, f"task {task_id} was cancelled")
        assert record.result is not None
        return record.result

    async def cancel(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if record.state in ("pending", "running"):
            # Kill the process first, so nothing outlives the cancel.
            await self._cancel_call(record.session_id, record.call_id)
            if record.runner is not None:
                record.runner.cancel()
                await asyncio.gather(record.runner, return_exceptions=True)
        return record

    def _trim(self) -> None:
        finished = sorted(
            (t for t in self.tasks.values() if t.finished_ms), key=lambda t: t.finished_ms
        )
        for record in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self.tasks[record.task_id]

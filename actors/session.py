"""SessionActor: one per session, pinned to the node holding its workspace and venv."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ray

from actors.metrics import session_metrics, timed
from codegen_ray.checkpoint import Manifest, open_checkpoint_store
from codegen_ray.config import CheckpointPolicy, Settings
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.isolation import UidLease, policy_for, probe_isolation
from codegen_ray.kernel import KernelRuntime
from codegen_ray.process import ProcessRunner
from codegen_ray.session import (
    Event,
    SessionRuntime,
    SessionSpec,
    effective_limits,
    now_ms,
)
from codegen_ray.tools import TOOLS, SessionInfo, SessionState
from codegen_ray.venv import VenvManager

_STREAM_END = object()


@ray.remote
class SessionActor:
    def __init__(
        self, session_id: str, session_dir: str, node_id: str, worker_id: str, settings: Settings
    ) -> None:
        self.settings = settings
        kernel_root = settings.state_dir / "kernel-runtime"
        choice = probe_isolation(
            settings.isolation, reachable=[Path(session_dir).parent, kernel_root]
        )
        self.uid_lease = UidLease(session_id, settings.isolation) if choice.tier == "uid" else None
        owner = self.uid_lease.owner if self.uid_lease is not None else None
        # Installs run as root (the uv cache is root's); the session's code as its uid.
        root_tier = "rlimits" if choice.tier == "uid" else choice.tier
        installer = ProcessRunner(policy_for(choice._replace(tier=root_tier)))
        venvs = VenvManager(
            installer, cache_dir=settings.resolved_uv_cache_dir(), python=choice.python
        )
        self.runtime = SessionRuntime(
            session_id,
            Path(session_dir),
            runner=ProcessRunner(policy_for(choice, owner)),
            venvs=venvs,
            limits=settings.limits,
            kernel_runtime=KernelRuntime(kernel_root, runner=installer, venvs=venvs),
        )
        self.info_ = SessionInfo(
            session_id=session_id,
            state=SessionState.CREATING,
            node_id=node_id,
            worker_id=worker_id,
            created_ms=now_ms(),
            limits=settings.limits,
        )
        self.calls: dict[str, asyncio.Task[Any]] = {}
        self.store = open_checkpoint_store(settings)
        self.last_manifest: Manifest | None = None
        self._lock: list[str] | None = None
        self._venv_stamp = -1
        self._checkpointing = asyncio.Lock()
        self.metrics = session_metrics(worker_id)

    async def start(self) -> dict[str, Any]:
        """Make the workspace and venv; idempotent."""
        if self.info_.state == SessionState.CREATING:
            try:
                with timed(self.metrics.venv_create_seconds):
                    await self.runtime.start()
            except Exception:
                self.info_.state = SessionState.FAILED
                raise
            self.info_.state = SessionState.READY
            self._prewarm = asyncio.ensure_future(self._prepare_kernel())
        return self.info()

    async def _prepare_kernel(self) -> None:
        try:
            await self.runtime.prepare_kernel()
        except Exception:  # noqa: BLE001 - the first kernel.execute retries and reports it
            logging.getLogger(__name__).warning("kernel runtime prewarm failed", exc_info=True)

    async def configure(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Give a (possibly pre-warmed) session its client's spec."""
        parsed = SessionSpec.model_validate(spec)
        limits = effective_limits(self.settings.limits, parsed.limits)
        self.runtime.configure(limits=limits, env=parsed.env)
        now = now_ms()
        self.info_ = self.info_.model_copy(
            update={
                "env": parsed.env,
                "metadata": parsed.metadata,
                "limits": limits,
                "created_ms": now,
            }
        )
        self.runtime.last_activity_ms = now
        return self.info()

    def info(self) -> dict[str, Any]:
        state = self.info_.state
        if state in (SessionState.READY, SessionState.BUSY, SessionState.IDLE):
            if self.runtime.active_calls:
                state = SessionState.BUSY
            elif self.runtime.last_activity_ms > self.info_.created_ms:
                state = SessionState.IDLE
        return self.info_.model_copy(
            update={"state": state, "last_activity_ms": self.runtime.last_activity_ms}
        ).model_dump(mode="json")

    def update_metadata(self, metadata: dict[str, str], replace: bool) -> dict[str, str]:
        merged = dict(metadata) if replace else {**self.info_.metadata, **metadata}
        self.info_ = self.info_.model_copy(update={"metadata": merged})
        return merged

    async def call(self, call_id: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self._require_usable()
        task = asyncio.ensure_future(self._call_durably(tool, arguments))
        self.calls[call_id] = task
        try:
            return await task
        except asyncio.CancelledError:
            raise CodegenError(ErrorCode.CANCELLED, f"{tool} was cancelled") from None
        finally:
            self.calls.pop(call_id, None)

    async def call_stream(
        self, call_id: str, tool: str, arguments: dict[str, Any]
    ) -> AsyncIterator[Event]:
        """Yield output and progress events as they happen, then one result or error event."""
        self._require_usable()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await self._call_durably(tool, arguments, queue.put)
                await queue.put({"type": "result", "result": result})
            except asyncio.CancelledError:
                await queue.put({"type": "error", "error": _cancelled(tool).to_dict()})
            except CodegenError as exc:
                await queue.put({"type": "error", "error": exc.to_dict()})
            finally:
                await queue.put(_STREAM_END)

        task = asyncio.ensure_future(run())
        self.calls[call_id] = task
        try:
            while (event := await queue.get()) is not _STREAM_END:
                yield event
        finally:
            self.calls.pop(call_id, None)
            if not task.done():
                task.cancel()

    async def _call_durably(
        self, tool: str, arguments: dict[str, Any], on_event: Any = None
    ) -> dict[str, Any]:
        """Run the tool; under the mutation policy, checkpoint before acknowledging."""
        if tool == "pkg.install":
            with timed(self.metrics.pkg_install_seconds):
                result = await self.runtime.call(tool, arguments, on_event)
        else:
            result = await self.runtime.call(tool, arguments, on_event)
        policy = self.settings.checkpoint.policy
        if policy == CheckpointPolicy.MUTATION and TOOLS[tool].mutating:
            try:
                await self.checkpoint("auto")
            except CodegenError as exc:
                # The session keeps working; the next checkpoint retries.
                result["checkpoint_warning"] = f"checkpoint failed, change not yet durable: {exc}"
        return result

    # --- checkpoints -------------------------------------------------------------------

    async def checkpoint(self, name: str = "") -> dict[str, Any]:
        async with self._checkpointing:
            with timed(self.metrics.checkpoint_seconds):
                packages = await self._package_lock()
                manifest = await asyncio.to_thread(
                    self.store.save,
                    self.info_.session_id,
                    self.runtime.workspace_dir,
                    packages=packages,
                    env=self.info_.env,
                    metadata=self.info_.metadata,
                    name=name,
                    parent=self.last_manifest,
                )
            self.metrics.checkpoint_bytes.observe(manifest.total_bytes)
            self.last_manifest = manifest
            self.info_.last_checkpoint_id = manifest.checkpoint_id
            await asyncio.to_thread(self.store.prune, self.info_.session_id)
            return checkpoint_summary(manifest)

    async def restore(self, checkpoint_id: str) -> dict[str, Any]:
        """Make this (fresh) session hold the checkpoint's files, packages, env and metadata."""
        manifest = await asyncio.to_thread(self.store.get, checkpoint_id)
        await asyncio.to_thread(
            self.store.restore_files, manifest, self.runtime.workspace_dir, self.runtime.owner
        )
        if manifest.packages:
            await self.runtime.venvs.sync(
                self.runtime.venv_dir, manifest.packages, limits=self.runtime.limits
            )
        self.runtime.configure(limits=self.runtime.limits, env=manifest.env)
        await self.runtime.on_restored()
        self.info_ = self.info_.model_copy(
            update={
                "env": manifest.env,
                "metadata": manifest.metadata,
                "last_checkpoint_id": manifest.checkpoint_id,
            }
        )
        if manifest.session_id == self.info_.session_id:
            self.last_manifest = manifest  # keep the chain incremental
        return self.info()

    async def _package_lock(self) -> list[str]:
        """The venv's lock, re-read only when site-packages changed (a cheap stat)."""
        stamp = _tree_stamp(self.runtime.venv_dir)
        if self._lock is None or stamp != self._venv_stamp:
            self._lock = await self.runtime.venvs.freeze(
                self.runtime.venv_dir, limits=self.runtime.limits
            )
            self._venv_stamp = stamp
        return self._lock

    def cancel(self, call_id: str) -> bool:
        task = self.calls.get(call_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def destroy(self) -> None:
        """Kill every running call, then remove the workspace and venv."""
        self.info_.state = SessionState.DESTROYING
        tasks = list(self.calls.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.runtime.close_kernel()
        await asyncio.to_thread(self.runtime.destroy)
        if self.uid_lease is not None:
            self.uid_lease.release()
        self.info_.state = SessionState.DESTROYED

    def pid(self) -> int:
        return os.getpid()

    def _require_usable(self) -> None:
        if self.info_.state in (SessionState.DESTROYING, SessionState.DESTROYED):
            raise CodegenError(ErrorCode.NOT_FOUND, f"session {self.info_.session_id} is destroyed")
        if self.info_.state == SessionState.CREATING:
            raise CodegenError(
                ErrorCode.UNAVAILABLE, "session is still starting; retry", retriable=True
            )


def _tree_stamp(venv_dir: Path) -> int:
    site = next(venv_dir.glob("lib/python*/site-packages"), None)
    return site.stat().st_mtime_ns if site is not None else 0


def checkpoint_summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "checkpoint_id": manifest.checkpoint_id,
        "session_id": manifest.session_id,
        "name": manifest.name,
        "created_ms": manifest.created_ms,
        "file_count": len(manifest.files),
        "total_bytes": manifest.total_bytes,
        "packages": manifest.packages,
    }


def _cancelled(tool: str) -> CodegenError:
    return CodegenError(ErrorCode.CANCELLED, f"{tool} was cancelled")

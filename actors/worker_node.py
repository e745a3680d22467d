"""WorkerNodeActor: one per worker node; owns its workspaces, capacity and warm pool."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.options import session_actor_options
from actors.session import SessionActor
from codegen_ray.config import Settings
from codegen_ray.errors import CodegenError, ErrorCode, exhausted


@ray.remote
class WorkerNodeActor:
    def __init__(self, settings: Settings | None, namespace: str) -> None:
        # On a joined node the node's own environment (WORKER_ID, MAX_SESSIONS,
        # BASE_WORKSPACE, inherited from `codegen-ray worker`) is the configuration.
        self.settings = settings or Settings()
        self.namespace = namespace
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.ip = ray.util.get_node_ip_address()
        self.base = self.settings.base_workspace
        self.base.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.live: dict[str, ActorHandle] = {}
        self.warm: list[tuple[str, ActorHandle]] = []
        self.warming = 0
        self._background: set[asyncio.Task[None]] = set()
        self.closing = False
        self._pool_changed = asyncio.Condition()

    def info(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "worker_id": self.settings.node_worker_id(),
            "ip": self.ip,
            "base_workspace": str(self.base),
            "max_sessions": self.settings.max_sessions,
            "live_sessions": len(self.live),
            "warm_sessions": len(self.warm),
        }

    def sessions(self) -> dict[str, ActorHandle]:
        return dict(self.live)

    async def create_session(
        self, spec: dict[str, Any], session_id: str = "", checkpoint_id: str = ""
    ) -> tuple[str, ActorHandle, dict[str, Any]]:
        """Claim a warm session or start one, optionally restored from a checkpoint.

        Raises RESOURCE_EXHAUSTED when the node is full; a failed restore leaves nothing.
        """
        if len(self.live) >= self.settings.max_sessions:
            raise exhausted(
                f"worker {self.settings.node_worker_id()} is at MAX_SESSIONS="
                f"{self.settings.max_sessions}; destroy a session or add a worker node"
            )
        fixed_id = bool(session_id)
        if not self.warm and self.warming:
            # A session already warming up is ready sooner than a cold start, and two
            # starts at once only compete for the node's cores.
            await self._wait_for_warm()
        if fixed_id and self.warm and self._full_with_warming():
            # A fixed id cannot take a warm actor (names are fixed): free its slot.
            spare_id, spare = self.warm.pop()
            ray.kill(spare, no_restart=True)
            shutil.rmtree(self.base / spare_id, ignore_errors=True)
        if self.warm and not fixed_id:
            session_id, handle = self.warm.pop()
        else:
            session_id, handle = await self._start_session(session_id or uuid.uuid4().hex)
        self.live[session_id] = handle
        try:
            if checkpoint_id:
                info = await handle.restore.remote(checkpoint_id)
            else:
                info = await handle.configure.remote(spec)
        except BaseException:
            await self.release(session_id)
            raise
        self._refill()
        return session_id, handle, info

    def _full_with_warming(self) -> bool:
        taken = len(self.live) + len(self.warm) + self.warming
        return taken >= self.settings.max_sessions

    async def release(self, session_id: str) -> None:
        """Forget a destroyed session and free its slot."""
        handle = self.live.pop(session_id, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        shutil.rmtree(self.base / session_id, ignore_errors=True)
        self._refill()

    async def shutdown_pool(self) -> None:
        """Destroy the warm sessions, those still starting too; refill no more."""
        self.closing = True
        await asyncio.gather(*list(self._background), return_exceptions=True)
        for _, handle in self.warm:
            try:
                await handle.destroy.remote()
            finally:
                ray.kill(handle, no_restart=True)
        self.warm.clear()

    def fill_pool(self) -> None:
        self._refill()

    async def _wait_for_warm(self) -> None:
        async with self._pool_changed:
            try:
                await asyncio.wait_for(
                    self._pool_changed.wait_for(lambda: bool(self.warm) or not self.warming),
                    timeout=self.settings.session.create_timeout_seconds,
                )
            except TimeoutError:
                pass  # start one cold instead

    async def _start_session(self, session_id: str) -> tuple[str, ActorHandle]:
        handle = SessionActor.options(
            **session_actor_options(session_id, self.node_id, self.namespace)
        ).remote(
            session_id,
            str(self.base / session_id),
            self.node_id,
            self.settings.node_worker_id(),
            self.settings,
        )
        try:
            await asyncio.wait_for(
                handle.start.remote(), timeout=self.settings.session.create_timeout_seconds
            )
        except TimeoutError:
            ray.kill(handle, no_restart=True)
            raise CodegenError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"session did not start within {self.settings.session.create_timeout_seconds}s "
                "on this node (no capacity?)",
                retriable=True,
            ) from None
        except BaseException:
            ray.kill(handle, no_restart=True)
            shutil.rmtree(self.base / session_id, ignore_errors=True)
            raise
        return session_id, handle

    def _refill(self) -> None:
        if self.closing:
            return
        room = self.settings.max_sessions - len(self.live) - len(self.warm) - self.warming
        wanted = self.settings.session.warm_pool_size - len(self.warm) - self.warming
        for _ in range(max(0, min(room, wanted))):
            self.warming += 1
            task = asyncio.ensure_future(self._warm_one())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _warm_one(self) -> None:
        try:
            self.warm.append(await self._start_session(uuid.uuid4().hex))
        except Exception:  # noqa: BLE001 - a failed warm-up only means a cold start later
            pass
        finally:
            self.warming -= 1
            async with self._pool_changed:
                self._pool_changed.notify_all()

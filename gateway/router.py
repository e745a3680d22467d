"""SessionRouter: session id -> SessionActor handle; worker discovery, placement, routing, reaping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.options import NODE_RESOURCE, worker_actor_options
from actors.worker_node import WorkerNodeActor
from codegen_ray.config import Settings
from codegen_ray.errors import CodegenError, ErrorCode, exhausted, not_found
from codegen_ray.session import Event, SessionSpec
from gateway.errors import from_ray

log = logging.getLogger(__name__)


@dataclass
class WorkerNode:
    node_id: str
    handle: ActorHandle
    worker_id: str = ""


@dataclass
class SessionEntry:
    session_id: str
    handle: ActorHandle
    node_id: str


class SessionRouter:
    def __init__(self, settings: Settings, *, local_node_id: str | None = None) -> None:
        self.settings = settings
        self.namespace = settings.ray.namespace
        # In embedded mode the gateway's own node is a worker node configured by the gateway.
        self.local_node_id = local_node_id
        self.workers: dict[str, WorkerNode] = {}
        self.sessions: dict[str, SessionEntry] = {}
        self._lock = asyncio.Lock()

    # --- nodes -----------------------------------------------------------------------

    async def refresh_nodes(self) -> None:
        """Start a WorkerNodeActor on every live codegen node and adopt its live sessions."""
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {
            n["NodeID"] for n in nodes if n.get("Alive") and n.get("Resources", {}).get(NODE_RESOURCE)
        }
        for node_id in list(self.workers):
            if node_id not in alive:
                log.warning("worker node %s is gone", node_id)
                del self.workers[node_id]
        for node_id in alive - set(self.workers):
            settings = self.settings if node_id == self.local_node_id else None
            handle = WorkerNodeActor.options(**worker_actor_options(node_id, self.namespace)).remote(
                settings, self.namespace
            )
            info = await handle.info.remote()
            self.workers[node_id] = WorkerNode(node_id, handle, info["worker_id"])
            for session_id, session in (await handle.sessions.remote()).items():
                self.sessions.setdefault(session_id, SessionEntry(session_id, session, node_id))
            handle.fill_pool.remote()

    async def worker_infos(self) -> list[dict[str, Any]]:
        infos = await asyncio.gather(
            *(w.handle.info.remote() for w in self.workers.values()), return_exceptions=True
        )
        return [i for i in infos if isinstance(i, dict)]

    # --- sessions --------------------------------------------------------------------

    async def create(self, spec: SessionSpec, node: str = "") -> dict[str, Any]:
        if not self.workers:
            await self.refresh_nodes()
        worker = await self._place(node)
        try:
            session_id, handle, info = await worker.handle.create_session.remote(spec.model_dump())
        except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
            raise from_ray(exc, "create session") from None
        self.sessions[session_id] = SessionEntry(session_id, handle, worker.node_id)
        return info

    async def _place(self, node: str) -> WorkerNode:
        infos = await self.worker_infos()
        if node:
            chosen = [i for i in infos if node in (i["node_id"], i["worker_id"])]
            if not chosen:
                known = ", ".join(f"{i['worker_id']} ({i['node_id'][:12]})" for i in infos)
                raise not_found(f"no worker node {node!r}; known: {known}")
            infos = chosen
        free = [(i["max_sessions"] - i["live_sessions"], i) for i in infos]
        free = [f for f in free if f[0] > 0]
        if not free:
            total = sum(i["max_sessions"] for i in infos)
            raise exhausted(
                f"all {len(infos)} worker node(s) are full ({total} sessions in all); "
                "destroy a session or add a worker node"
            )
        best = max(free, key=lambda f: f[0])[1]
        return self.workers[best["node_id"]]

    def entry(self, session_id: str) -> SessionEntry:
        if not session_id:
            raise CodegenError(
                ErrorCode.INVALID_ARGUMENT,
                "this tool runs in a session: pass session_id (create one first)",
            )
        try:
            return self.sessions[session_id]
        except KeyError:
            raise not_found(
                f"no session {session_id!r}: it was destroyed, reaped after idling, or never "
                "existed; create a new session"
            ) from None

    async def get(self, session_id: str) -> dict[str, Any]:
        entry = self.entry(session_id)
        return await self._remote(entry, "get session", entry.handle.info.remote())

    async def list(self) -> list[dict[str, Any]]:
        infos = await asyncio.gather(
            *(e.handle.info.remote() for e in self.sessions.values()), return_exceptions=True
        )
        return [i for i in infos if isinstance(i, dict)]

    async def destroy(self, session_id: str) -> None:
        entry = self.entry(session_id)
        del self.sessions[session_id]
        try:
            await entry.handle.destroy.remote()
        except Exception as exc:  # noqa: BLE001 - a lost actor is already gone
            log.info("destroy %s: %s", session_id, from_ray(exc, "destroy"))
        worker = self.workers.get(entry.node_id)
        if worker is not None:
            await worker.handle.release.remote(session_id)
        else:
            ray.kill(entry.handle, no_restart=True)

    async def update_metadata(
        self, session_id: str, metadata: dict[str, str], replace: bool
    ) -> dict[str, str]:
        entry = self.entry(session_id)
        return await self._remote(
            entry, "update metadata", entry.handle.update_metadata.remote(metadata, replace)
        )

    # --- calls -----------------------------------------------------------------------

    async def call(
        self, session_id: str, tool: str, arguments: dict[str, Any], call_id: str
    ) -> dict[str, Any]:
        entry = self.entry(session_id)
        return await self._remote(entry, tool, entry.handle.call.remote(call_id, tool, arguments))

    async def stream(
        self, session_id: str, tool: str, arguments: dict[str, Any], call_id: str
    ) -> AsyncIterator[Event]:
        entry = self.entry(session_id)
        refs = entry.handle.call_stream.options(num_returns="streaming").remote(
            call_id, tool, arguments
        )
        try:
            async for ref in refs:
                yield await ref
        except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
            raise from_ray(exc, tool) from None

    async def cancel(self, session_id: str, call_id: str) -> bool:
        entry = self.sessions.get(session_id)
        if entry is None:
            return False
        try:
            return bool(await entry.handle.cancel.remote(call_id))
        except Exception:  # noqa: BLE001 - nothing left to cancel
            return False

    async def _remote(self, entry: SessionEntry, what: str, ref: Any) -> Any:
        try:
            return await ref
        except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
            raise from_ray(exc, what) from None

    # --- housekeeping ----------------------------------------------------------------

    async def reap_idle(self) -> list[str]:
        """Destroy sessions idle for longer than the idle timeout; returns their ids."""
        limit_ms = self.settings.session.idle_timeout_seconds * 1000
        now = time.time() * 1000
        reaped = []
        for info in await self.list():
            busy = info["state"] == "busy"
            if not busy and now - info["last_activity_ms"] > limit_ms:
                reaped.append(info["session_id"])
                await self.destroy(info["session_id"])
        return reaped

    async def run_housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session.reap_interval_seconds)
            try:
                await self.refresh_nodes()
                for session_id in await self.reap_idle():
                    log.info("reaped idle session %s", session_id)
            except Exception:  # noqa: BLE001 - housekeeping must never die
                log.exception("housekeeping failed")

"""SessionRouter: session id -> SessionActor; node discovery, placement, routing, reaping."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray
from ray import exceptions as rex
from ray.actor import ActorHandle

from actors.options import NODE_RESOURCE, worker_actor_options
from actors.worker_node import WorkerNodeActor
from codegen_ray.checkpoint import CheckpointStore, Manifest, SessionMarkers
from codegen_ray.config import Settings
from codegen_ray.errors import CodegenError, ErrorCode, exhausted, not_found
from codegen_ray.session import Event, SessionSpec, now_ms
from codegen_ray.tools import TOOLS, SessionInfo, SessionState
from gateway.errors import SESSION_LOST, from_ray

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
    def __init__(
        self,
        settings: Settings,
        *,
        local_node_id: str | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.markers = SessionMarkers(store.blobs) if store is not None else None
        # Sessions asleep in the store (checkpointed, no actor), by id.
        self.hibernated: dict[str, dict[str, Any]] = {}
        # Sessions being restored (node loss, wake-up): callers wait on these.
        self._restoring: dict[str, asyncio.Future[None]] = {}
        self.namespace = settings.ray.namespace
        # In embedded mode the gateway's own node is a worker node configured by the gateway.
        self.local_node_id = local_node_id
        self.workers: dict[str, WorkerNode] = {}
        self.sessions: dict[str, SessionEntry] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- nodes -----------------------------------------------------------------------

    async def refresh_nodes(self) -> None:
        """Start a WorkerNodeActor on every live codegen node and adopt its live sessions."""
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {
            n["NodeID"]
            for n in nodes
            if n.get("Alive") and n.get("Resources", {}).get(NODE_RESOURCE)
        }
        for node_id in list(self.workers):
            if node_id not in alive:
                log.warning("worker node %s is gone; restoring its sessions", node_id)
                del self.workers[node_id]
                for entry in [e for e in self.sessions.values() if e.node_id == node_id]:
                    self._background(self.recover(entry.session_id))
        for node_id in alive - set(self.workers):
            settings = self.settings if node_id == self.local_node_id else None
            handle = WorkerNodeActor.options(
                **worker_actor_options(node_id, self.namespace)
            ).remote(settings, self.namespace)
            info = await handle.info.remote()
            self.workers[node_id] = WorkerNode(node_id, handle, info["worker_id"])
            for session_id, session in (await handle.sessions.remote()).items():
                self.sessions.setdefault(session_id, SessionEntry(session_id, session, node_id))
            handle.fill_pool.remote()

    async def load_hibernated(self) -> None:
        if self.markers is not None:
            self.hibernated.update(await asyncio.to_thread(self.markers.all))

    async def worker_infos(self) -> list[dict[str, Any]]:
        async def info(worker: WorkerNode) -> dict[str, Any]:
            return await asyncio.wait_for(worker.handle.info.remote(), timeout=10)

        infos = await asyncio.gather(
            *(info(w) for w in self.workers.values()), return_exceptions=True
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

    async def _place(self, node: str, avoid: str = "") -> WorkerNode:
        infos = [i for i in await self.worker_infos() if i["node_id"] != avoid]
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

    def check(self, session_id: str) -> None:
        """Raise unless the session exists: live, asleep, or being restored."""
        if session_id not in self.hibernated and session_id not in self._restoring:
            self.entry(session_id)

    async def live(self, session_id: str) -> SessionEntry:
        """The session's actor, waking it or waiting for its restore first."""
        pending = self._restoring.get(session_id)
        if pending is not None:
            await asyncio.shield(pending)
        elif session_id in self.hibernated:
            await self.wake(session_id)
        return self.entry(session_id)

    async def get(self, session_id: str) -> dict[str, Any]:
        if session_id in self.hibernated:
            return self.hibernated[session_id]
        entry = await self.live(session_id)
        return await self._remote(entry, "get session", entry.handle.info.remote())

    async def list(self) -> list[dict[str, Any]]:
        infos = await asyncio.gather(
            *(e.handle.info.remote() for e in self.sessions.values()), return_exceptions=True
        )
        return [i for i in infos if isinstance(i, dict)] + list(self.hibernated.values())

    async def destroy(self, session_id: str) -> None:
        if session_id in self.hibernated:
            del self.hibernated[session_id]
            if self.markers is not None:
                await asyncio.to_thread(self.markers.delete, session_id)
            return
        await self.live(session_id)
        await self.destroy_actor(session_id)

    async def update_metadata(
        self, session_id: str, metadata: dict[str, str], replace: bool
    ) -> dict[str, str]:
        entry = await self.live(session_id)
        return await self._remote(
            entry, "update metadata", entry.handle.update_metadata.remote(metadata, replace)
        )

    # --- calls -----------------------------------------------------------------------

    async def call(
        self, session_id: str, tool: str, arguments: dict[str, Any], call_id: str
    ) -> dict[str, Any]:
        entry = await self.live(session_id)
        try:
            return await entry.handle.call.remote(call_id, tool, arguments)
        except SESSION_LOST:
            await self.recover(session_id, lost=entry)
            if TOOLS[tool].read_only:
                entry = self.entry(session_id)
                return await self._remote(
                    entry, tool, entry.handle.call.remote(call_id, tool, arguments)
                )
            raise self._cut_off(tool) from None
        except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
            raise from_ray(exc, tool) from None

    async def stream(
        self, session_id: str, tool: str, arguments: dict[str, Any], call_id: str
    ) -> AsyncIterator[Event]:
        entry = await self.live(session_id)
        refs = entry.handle.call_stream.options(num_returns="streaming").remote(
            call_id, tool, arguments
        )
        try:
            async for ref in refs:
                yield await ref
        except SESSION_LOST:
            await self.recover(session_id, lost=entry)
            raise self._cut_off(tool) from None
        except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
            raise from_ray(exc, tool) from None

    @staticmethod
    def _cut_off(tool: str) -> CodegenError:
        return CodegenError(
            ErrorCode.UNAVAILABLE,
            f"{tool} was cut off: the session's node was lost. The session has been restored "
            "from its last checkpoint (every acknowledged change is kept); retry the call",
            retriable=True,
        )

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

    # --- checkpoints, restore, node loss, hibernation --------------------------------------

    def _require_store(self) -> CheckpointStore:
        if self.store is None:
            raise CodegenError(ErrorCode.FAILED_PRECONDITION, "no checkpoint store configured")
        return self.store

    async def checkpoint(self, session_id: str, name: str = "") -> dict[str, Any]:
        entry = await self.live(session_id)
        return await self._remote(entry, "checkpoint", entry.handle.checkpoint.remote(name))

    async def list_checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        from actors.session import checkpoint_summary

        store = self._require_store()
        manifests = await asyncio.to_thread(store.list, session_id)
        if not manifests:
            self.check(session_id)
        return [checkpoint_summary(m) for m in manifests]

    async def restore(
        self, checkpoint_id: str, node: str = "", new_session: bool = False
    ) -> dict[str, Any]:
        """Restore a checkpoint: in place, onto another node, or as a new session."""
        store = self._require_store()
        manifest = await asyncio.to_thread(store.get, checkpoint_id)
        session_id = uuid.uuid4().hex if new_session else manifest.session_id
        current = self.sessions.get(session_id)
        if current is not None and (
            not node or node in (current.node_id, self._worker_id(current))
        ):
            return await self._remote(
                current, "restore", current.handle.restore.remote(checkpoint_id)
            )
        if current is not None:
            await self._move(session_id, checkpoint_id, node)
        else:
            await self._restore_into(session_id, checkpoint_id, node)
        if self.hibernated.pop(session_id, None) is not None and self.markers is not None:
            await asyncio.to_thread(self.markers.delete, session_id)
        return await self.get(session_id)

    async def _move(self, session_id: str, checkpoint_id: str, node: str) -> None:
        """Restore a live session onto another node; on failure it is put back as it was.

        The actor name is fixed, so the old actor must go before the new one starts: its
        state is checkpointed first, and restored (on any node) if the move fails.
        """
        await self._place(node)  # RESOURCE_EXHAUSTED before anything is touched
        kept = await self.checkpoint(session_id, "before-restore")
        await self.destroy_actor(session_id)
        try:
            await self._restore_into(session_id, checkpoint_id, node)
        except BaseException:
            await self._restore_into(session_id, str(kept["checkpoint_id"]))
            raise

    def _worker_id(self, entry: SessionEntry) -> str:
        worker = self.workers.get(entry.node_id)
        return worker.worker_id if worker else ""

    async def _restore_into(
        self, session_id: str, checkpoint_id: str, node: str = "", avoid: str = ""
    ) -> None:
        spec = SessionSpec().model_dump()
        deadline = time.monotonic() + self.settings.session.create_timeout_seconds
        while True:
            worker = await self._place(node, avoid)
            try:
                _, handle, _ = await worker.handle.create_session.remote(
                    spec, session_id, checkpoint_id
                )
                break
            except Exception as exc:  # noqa: BLE001 - translated into our vocabulary
                error = from_ray(exc, "restore")
                # The dead actor may still hold its name for a moment after its node died.
                if "already taken" in error.message and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    continue
                raise error from None
        self.sessions[session_id] = SessionEntry(session_id, handle, worker.node_id)

    async def recover(self, session_id: str, lost: SessionEntry | None = None) -> None:
        """Bring a session whose node died back from its latest checkpoint, same id."""
        pending = self._restoring.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        entry = self.sessions.get(session_id)
        if entry is None or (lost is not None and entry.handle is not lost.handle):
            return  # already recovered by someone else
        if lost is not None:
            if not await self._confirm_lost(entry):
                return  # a transient error: the actor still answers, nothing to restore
            # While we looked, the node watcher may have started (or finished) the restore.
            pending = self._restoring.get(session_id)
            if pending is not None:
                return await asyncio.shield(pending)
            if self.sessions.get(session_id) is not entry:
                return

        async def work() -> None:
            self.sessions.pop(session_id, None)
            store = self._require_store()
            manifest = await asyncio.to_thread(store.latest, session_id)
            if manifest is None:
                raise CodegenError(
                    ErrorCode.NOT_FOUND,
                    f"session {session_id} was lost with its node and had no checkpoint",
                )
            try:
                await self._restore_into(session_id, manifest.checkpoint_id, avoid=entry.node_id)
            except CodegenError as exc:
                # No room (or a bad store) now: park it asleep so a later call wakes it,
                # rather than losing the session.
                log.warning("could not restore %s: %s; parked as hibernated", session_id, exc)
                await self._park(manifest)
                raise
            log.info("restored session %s from %s", session_id, manifest.checkpoint_id)

        await self._run_restoring(session_id, work())

    async def _confirm_lost(self, entry: SessionEntry) -> bool:
        """An actor error can be transient; a session is lost once its node or actor is dead.

        Restoring a session whose actor still lives would orphan that actor and find its
        name taken, so wait (about as long as Ray takes to declare a node dead) for proof.
        """
        period = self.settings.ray.health_check_period_ms / 1000
        deadline = time.monotonic() + period * (
            self.settings.ray.health_check_failure_threshold + 3
        )
        while time.monotonic() < deadline:
            if entry.node_id not in self.workers:
                return True  # the node watcher saw the node go
            try:
                await asyncio.wait_for(entry.handle.info.remote(), timeout=max(period, 1.0))
                return False
            except rex.ActorDiedError:
                return True
            except Exception:  # noqa: BLE001 - unavailable or slow: look again
                await asyncio.sleep(min(period, 0.5))
        return True

    async def _park(self, manifest: Manifest) -> None:
        """Record a session whose actor is gone as hibernated at ``manifest``."""
        record = SessionInfo(
            session_id=manifest.session_id,
            state=SessionState.HIBERNATED,
            created_ms=manifest.created_ms,
            last_activity_ms=now_ms(),
            metadata=manifest.metadata,
            env=manifest.env,
            limits=self.settings.limits,
            last_checkpoint_id=manifest.checkpoint_id,
        ).model_dump(mode="json")
        self.hibernated[manifest.session_id] = record
        if self.markers is not None:
            await asyncio.to_thread(self.markers.put, manifest.session_id, record)

    async def hibernate(self, session_id: str) -> dict[str, Any]:
        """Checkpoint an idle session and release its actor and slot."""
        entry = self.entry(session_id)
        info = await self._remote(entry, "hibernate", entry.handle.info.remote())
        summary = await self._remote(
            entry, "hibernate", entry.handle.checkpoint.remote("hibernate")
        )
        record = {
            **info,
            "state": SessionState.HIBERNATED.value,
            "last_checkpoint_id": summary["checkpoint_id"],
        }
        if self.markers is not None:
            await asyncio.to_thread(self.markers.put, session_id, record)
        self.hibernated[session_id] = record
        await self.destroy_actor(session_id)
        return record

    async def wake(self, session_id: str) -> None:
        record = self.hibernated.get(session_id)
        if record is None:
            return

        async def work() -> None:
            await self._restore_into(session_id, str(record["last_checkpoint_id"]))
            self.hibernated.pop(session_id, None)
            if self.markers is not None:
                await asyncio.to_thread(self.markers.delete, session_id)

        await self._run_restoring(session_id, work())

    async def _run_restoring(self, session_id: str, work: Any) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restoring[session_id] = future
        try:
            await work
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters get it too
            raise
        finally:
            self._restoring.pop(session_id, None)

    async def destroy_actor(self, session_id: str) -> None:
        """End a live session's actor and free its slot (its checkpoints stay)."""
        entry = self.sessions.pop(session_id)
        try:
            await entry.handle.destroy.remote()
        except Exception as exc:  # noqa: BLE001 - a lost actor is already gone
            log.info("destroy %s: %s", session_id, from_ray(exc, "destroy"))
        worker = self.workers.get(entry.node_id)
        if worker is not None:
            await worker.handle.release.remote(session_id)
        else:
            ray.kill(entry.handle, no_restart=True)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- housekeeping ----------------------------------------------------------------

    async def reap_idle(self) -> list[str]:
        """Hibernate sessions idle past hibernate_after; destroy those idle past the timeout."""
        hibernate_ms = self.settings.session.hibernate_after_seconds * 1000
        destroy_ms = self.settings.session.idle_timeout_seconds * 1000
        now = now_ms()
        reaped = []
        for info in await self.list():
            idle = now - info["last_activity_ms"]
            session_id = info["session_id"]
            if info["state"] == "busy" or session_id in self._restoring:
                continue
            if idle > destroy_ms:
                reaped.append(session_id)
                await self.destroy(session_id)
            elif idle > hibernate_ms and info["state"] != "hibernated" and self.store is not None:
                try:
                    await self.hibernate(session_id)
                    log.info("hibernated idle session %s", session_id)
                except CodegenError as exc:
                    log.warning("could not hibernate %s: %s", session_id, exc)
        return reaped

    async def run_housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session.reap_interval_seconds)
            try:
                for session_id in await self.reap_idle():
                    log.info("reaped idle session %s", session_id)
            except Exception:  # noqa: BLE001 - housekeeping must never die
                log.exception("housekeeping failed")

    async def watch_nodes(self) -> None:
        """Poll node liveness often: a dead node's sessions are restored within seconds."""
        period = self.settings.ray.health_check_period_ms / 1000
        while True:
            await asyncio.sleep(period)
            try:
                await self.refresh_nodes()
            except Exception:  # noqa: BLE001 - the watcher must never die
                log.exception("node watch failed")

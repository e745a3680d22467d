"""One session's runtime: its workspace, venv and processes, and the tools acting on them.

Plain Python; ``actors.session.SessionActor`` is a thin Ray shell around it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from codegen_ray import snapshot
from codegen_ray.config import Limits
from codegen_ray.errors import CodegenError, ErrorCode, invalid, not_found
from codegen_ray.kernel import KernelExecuteResult, KernelRuntime, SessionKernel
from codegen_ray.kernel_tools import (
    KernelExecuteArgs,
    KernelInterruptArgs,
    KernelInterruptResult,
    KernelRestartArgs,
    KernelRestartResult,
    kernel_execute,
    kernel_interrupt,
    kernel_restart,
)
from codegen_ray.process import ProcessRunner
from codegen_ray.tools import (
    MAX_CHANGED_FILES,
    ArtifactGetArgs,
    ArtifactGetResult,
    EchoArgs,
    EchoResult,
    FsDeleteArgs,
    FsDeleteResult,
    FsListArgs,
    FsListResult,
    FsReadArgs,
    FsReadResult,
    FsWriteArgs,
    FsWriteResult,
    PkgInstallArgs,
    PkgListArgs,
    PkgListResult,
    RunPythonArgs,
    RunPythonResult,
    SessionState,
    get_tool,
    parse_args,
)
from codegen_ray.venv import VenvManager
from codegen_ray.workspace import Workspace

Event = dict[str, Any]
EventCallback = Callable[[Event], Awaitable[None] | None]


def now_ms() -> int:
    return int(time.time() * 1000)


class SessionSpec(BaseModel):
    """What a client asks for when it creates a session."""

    env: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict, description="Overrides of Limits.")


def effective_limits(ceiling: Limits, overrides: dict[str, Any]) -> Limits:
    """Apply a session's overrides; they may tighten the gateway's limits, never loosen them."""
    unknown = set(overrides) - set(Limits.model_fields)
    if unknown:
        raise invalid(f"unknown limits {sorted(unknown)}; known: {sorted(Limits.model_fields)}")
    try:
        asked = Limits.model_validate({**ceiling.model_dump(), **overrides})
    except ValueError as exc:
        raise invalid(f"bad limits: {exc}") from None
    for name in overrides:
        if name != "kill_grace_seconds" and getattr(asked, name) > getattr(ceiling, name):
            most = getattr(ceiling, name)
            raise invalid(f"limit {name}={getattr(asked, name)} exceeds the gateway's {most}")
    return asked


class SessionRuntime:
    """Workspace, venv and tool dispatch of one session, in ``session_dir`` on this node."""

    def __init__(
        self,
        session_id: str,
        session_dir: Path,
        *,
        runner: ProcessRunner,
        venvs: VenvManager,
        limits: Limits,
        env: dict[str, str] | None = None,
        kernel_runtime: KernelRuntime | None = None,
    ) -> None:
        self.session_id = session_id
        self.kernel_runtime = kernel_runtime
        self._kernel: SessionKernel | None = None
        self.session_dir = session_dir
        self.workspace_dir = session_dir / "workspace"
        self.venv_dir = session_dir / "venv"
        self.tmp_dir = session_dir / "tmp"
        self.runner = runner
        self.venvs = venvs
        self.limits = limits
        self.env = dict(env or {})
        self.workspace = Workspace(
            self.workspace_dir,
            max_file_bytes=limits.max_file_bytes,
            max_read_bytes=limits.max_read_bytes,
            owner=self.owner,
        )
        self.active_calls = 0
        self.last_activity_ms = now_ms()
        self._handlers: dict[str, Callable[[Any, EventCallback | None], Awaitable[BaseModel]]] = {
            "echo": self._echo,
            "fs.read": self._fs_read,
            "fs.write": self._fs_write,
            "fs.list": self._fs_list,
            "fs.delete": self._fs_delete,
            "run.python": self._run_python,
            "pkg.install": self._pkg_install,
            "pkg.list": self._pkg_list,
            "artifact.get": self._artifact_get,
            "kernel.execute": self._kernel_execute,
            "kernel.interrupt": self._kernel_interrupt,
            "kernel.restart": self._kernel_restart,
        }

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) the session's code runs as, when it has its own."""
        return self.runner.isolation.owner

    async def start(self) -> None:
        # <id> 0711 and root's; workspace and tmp 0700 and the session uid's; the venv
        # stays root's and world-readable (installs run as root): no other session uid
        # can list or read the first two.
        self.session_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chmod(self.session_dir, 0o711)
        for path in (self.workspace_dir, self.tmp_dir):
            path.mkdir(exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)
            if self.owner is not None:
                os.chown(path, *self.owner)
        await self.venvs.create(self.venv_dir)

    async def prepare_kernel(self) -> None:
        """Install the node's shared kernel runtime ahead of the first kernel.execute."""
        if self.kernel_runtime is not None:
            await self.kernel_runtime.prepare(self.venv_dir)

    def configure(self, *, limits: Limits, env: dict[str, str]) -> None:
        """Apply a claimed warm session's spec."""
        self.limits = limits
        self.env = dict(env)
        self._kernel = None  # a kernel starts on first use, with this env and these limits
        self.workspace = Workspace(
            self.workspace_dir,
            max_file_bytes=limits.max_file_bytes,
            max_read_bytes=limits.max_read_bytes,
            owner=self.owner,
        )

    async def call(
        self, tool: str, arguments: dict[str, Any], on_event: EventCallback | None = None
    ) -> dict[str, Any]:
        spec = get_tool(tool)
        handler = self._handlers.get(tool)
        if handler is None:
            raise invalid(f"tool {tool!r} does not run inside a session")
        args = parse_args(spec, arguments)
        self.active_calls += 1
        self.last_activity_ms = now_ms()
        try:
            result = await handler(args, on_event)
        finally:
            self.active_calls -= 1
            self.last_activity_ms = now_ms()
        return result.model_dump(mode="json")

    def destroy(self) -> None:
        shutil.rmtree(self.session_dir, ignore_errors=True)

    # --- the persistent kernel -------------------------------------------------------

    def _session_kernel(self) -> SessionKernel:
        if self.kernel_runtime is None:
            raise CodegenError(ErrorCode.FAILED_PRECONDITION, "this node has no Python kernel")
        if self._kernel is None:
            self._kernel = SessionKernel(
                self.venv_dir,
                self.workspace_dir,
                self.process_env(),
                self.kernel_runtime,
                self.runner.isolation,
                self.limits,
            )
        return self._kernel

    async def _kernel_execute(
        self, args: KernelExecuteArgs, _: EventCallback | None
    ) -> KernelExecuteResult:
        return await kernel_execute(self._session_kernel(), args, self.limits)

    async def _kernel_interrupt(
        self, args: KernelInterruptArgs, _: EventCallback | None
    ) -> KernelInterruptResult:
        if self._kernel is None:
            return KernelInterruptResult(interrupted=False, message="No code was running.")
        return await kernel_interrupt(self._kernel)

    async def _kernel_restart(
        self, args: KernelRestartArgs, _: EventCallback | None
    ) -> KernelRestartResult:
        return await kernel_restart(self._session_kernel())

    async def close_kernel(self) -> None:
        if self._kernel is not None:
            await self._kernel.shutdown()
            self._kernel = None

    async def on_restored(self) -> None:
        """Kernel state is not checkpointed: say so on the next execute."""
        await self._session_kernel().discard(
            "the session was restored from a checkpoint; kernel variables are not saved, "
            "so re-run the cells you need"
        )

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        venv_bin = self.venv_dir / "bin"
        env = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.workspace_dir),
            "TMPDIR": str(self.tmp_dir),
            "VIRTUAL_ENV": str(self.venv_dir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
        }
        env.update(self.env)
        env.update(extra or {})
        return env

    # --- tools -----------------------------------------------------------------------

    async def _echo(self, args: EchoArgs, _: EventCallback | None) -> EchoResult:
        return EchoResult(message=args.message)

    async def _fs_read(self, args: FsReadArgs, _: EventCallback | None) -> FsReadResult:
        data, size = await asyncio.to_thread(
            self.workspace.read, args.path, args.offset, args.length
        )
        if args.encoding == "base64":
            return FsReadResult(
                contents=base64.b64encode(data).decode(), size_bytes=size, encoding="base64"
            )
        partial = args.offset > 0 or len(data) < size
        try:
            text = data.decode("utf-8", errors="replace" if partial else "strict")
        except UnicodeDecodeError:
            raise invalid(
                f"{args.path} is not UTF-8 text (binary?); read it with encoding='base64'"
            ) from None
        return FsReadResult(contents=text, size_bytes=size, encoding="utf-8")

    async def _fs_write(self, args: FsWriteArgs, _: EventCallback | None) -> FsWriteResult:
        if args.encoding == "base64":
            try:
                data = base64.b64decode(args.contents, validate=True)
            except (binascii.Error, ValueError):
                raise invalid("contents is not valid base64") from None
        else:
            data = args.contents.encode("utf-8")
        written = await asyncio.to_thread(
            self.workspace.write, args.path, data, create_dirs=args.create_dirs, append=args.append
        )
        return FsWriteResult(path=args.path, bytes_written=written)

    async def _fs_list(self, args: FsListArgs, _: EventCallback | None) -> FsListResult:
        files = await asyncio.to_thread(
            self.workspace.list, args.path, recursive=args.recursive, pattern=args.pattern
        )
        return FsListResult(files=files, total_count=len(files))

    async def _fs_delete(self, args: FsDeleteArgs, _: EventCallback | None) -> FsDeleteResult:
        await asyncio.to_thread(self.workspace.delete, args.path, recursive=args.recursive)
        return FsDeleteResult(deleted=True)

    async def _run_python(
        self, args: RunPythonArgs, on_event: EventCallback | None
    ) -> RunPythonResult:
        timeout = args.timeout_seconds or self.limits.timeout_seconds
        if timeout > self.limits.max_timeout_seconds:
            raise invalid(
                f"timeout_seconds={timeout} exceeds the limit of {self.limits.max_timeout_seconds}"
            )
        python = str(self.venv_dir / "bin" / "python")
        if args.code is not None:
            argv = [python, "-c", args.code]
        elif args.file is not None:
            path = self.workspace.resolve(args.file)
            if not path.is_file():
                raise not_found(f"no file {args.file!r} in the workspace; write it with fs.write")
            argv = [python, str(path)]
        else:
            argv = [python, "-m", str(args.module)]
        stdin = args.stdin.encode("utf-8") if args.stdin is not None else None
        before = await asyncio.to_thread(snapshot.take, self.workspace_dir)
        run = await self.runner.run(
            [*argv, *args.args],
            cwd=self.workspace_dir,
            env=self.process_env(args.env),
            limits=self.limits,
            stdin=stdin,
            timeout=timeout,
            on_output=_output_forwarder(on_event),
        )
        after = None
        if before is not None:
            after = await asyncio.to_thread(snapshot.take, self.workspace_dir)
        return RunPythonResult(
            **run.model_dump(),
            changed_files=snapshot.changed(before, after, MAX_CHANGED_FILES),
        )

    async def _pkg_install(self, args: PkgInstallArgs, on_event: EventCallback | None) -> BaseModel:
        if on_event is not None:
            await _emit(on_event, {"type": "progress", "message": f"installing {args.packages}"})
        result = await self.venvs.install(
            self.venv_dir,
            args.packages,
            limits=self._install_limits(),
            upgrade=args.upgrade,
            no_deps=args.no_deps,
            index_url=args.index_url,
            on_output=_output_forwarder(on_event),
        )
        if on_event is not None:
            await _emit(on_event, {"type": "progress", "message": "install finished"})
        return result

    async def _pkg_list(self, args: PkgListArgs, _: EventCallback | None) -> PkgListResult:
        packages = await self.venvs.list(self.venv_dir, limits=self._install_limits())
        return PkgListResult(packages=packages)

    async def _artifact_get(
        self, args: ArtifactGetArgs, _: EventCallback | None
    ) -> ArtifactGetResult:
        path = args.workspace_path  # an artifact id is a workspace path, for now
        data, size = await asyncio.to_thread(self.workspace.read, path)
        return ArtifactGetResult(
            path=path,
            data=base64.b64encode(data).decode(),
            content_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
            size_bytes=size,
        )

    def _install_limits(self) -> Limits:
        # Resolving and downloading takes longer than a typical run; use the ceiling.
        return self.limits.model_copy(update={"timeout_seconds": self.limits.max_timeout_seconds})


async def _emit(callback: EventCallback, event: Event) -> None:
    outcome = callback(event)
    if outcome is not None:
        await outcome


def _output_forwarder(on_event: EventCallback | None) -> Callable[[str, bytes], Any] | None:
    if on_event is None:
        return None

    async def forward(stream: str, chunk: bytes) -> None:
        await _emit(on_event, {"type": "output", "stream": stream, "data": chunk})

    return forward


def require_state(state: SessionState, *allowed: SessionState) -> None:
    if state not in allowed:
        raise CodegenError(
            ErrorCode.FAILED_PRECONDITION, f"session is {state.value}; expected one of {allowed}"
        )

"""A gateway of our own: ``codegen-ray serve`` on free ports as a subprocess, and its stop.

Used where a command needs a gateway and none was given (``codegen-ray mcp``,
``codegen-ray bench``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.procs import descendants, process_table, start_times

START_SECONDS = 180.0
STOP_SECONDS = 60.0


class EmbeddedGateway:
    """``codegen-ray serve`` on port 0 in its own process session.

    ``env`` overrides the environment (state dir, workspaces, limits...). Output goes to
    ``log`` (default ``workdir/gateway.log``); stdout stays free for the caller.
    """

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, log: IO[bytes] | None = None
    ) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self.stop_seconds = 0.0
        self.stop_path = ""
        self.orphans: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = START_SECONDS) -> str:
        """Start it and wait until it serves; returns its gRPC target."""
        port_file = self.workdir / "grpc-port"
        env = {k: v for k, v in os.environ.items() if k not in ("COORDINATOR_ADDR", "RAY_ADDRESS")}
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env.update(CODEGEN_HTTP_PORT="0", **self.env)
        argv = [sys.executable, "-m", "codegen_ray.cli", "serve", "--grpc-port", "0"]
        argv += ["--port-file", str(port_file)]
        began = time.monotonic()
        with contextlib.ExitStack() as stack:
            log = self.log or stack.enter_context((self.workdir / "gateway.log").open("wb"))
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=log, start_new_session=True
            )
        while time.monotonic() - began < timeout:
            if port_file.exists() and port_file.read_text().strip():
                self.start_seconds = time.monotonic() - began
                return f"127.0.0.1:{port_file.read_text().strip()}"
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise CodegenError(
            ErrorCode.UNAVAILABLE, f"the embedded gateway did not start:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "gateway.log"
        if self.log is not None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGINT (the gateway ends its sessions, then Ray), then SIGKILL what is left.

        Records which path ran in ``stop_path`` and the names of killed leftovers.
        """
        if self.process is None or self.process.poll() is not None:
            return
        began = time.monotonic()
        # Ray workers run in process groups of their own: remember them to reap orphans.
        table = process_table()
        tree = start_times(descendants(self.pid, table))
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
            self.stop_path = "sigint"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
            self.stop_path = "killpg"
        leftovers = [pid for pid, started in start_times(set(tree)).items() if tree[pid] == started]
        self.orphans = sorted({table[pid].cmdline.split(" ")[0] for pid in leftovers})
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            self.stop_path += f"+killed {len(leftovers)} orphans"
        self.stop_seconds = time.monotonic() - began

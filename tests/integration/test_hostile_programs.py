"""Misbehaving programs: each is contained, nothing it started outlives the call, and the
session stays usable afterwards."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from codegen_ray.client import AsyncClient


@pytest_asyncio.fixture(scope="module")
async def hostile(client: AsyncClient) -> AsyncIterator[str]:
    sid = (await client.create_session(limits={"kill_grace_seconds": 1.0}))["session_id"]
    yield sid
    await client.destroy_session(sid)


@pytest_asyncio.fixture
async def contained(hostile: str, h: Any) -> AsyncIterator[int]:
    """Yields the SessionActor's pid; afterwards the session works and has no children."""
    actor = await h.actor_pid(hostile)
    yield actor
    leftovers = [p for p in h.children(actor) if h.alive(p)]
    assert leftovers == [], f"processes outlived their call: {leftovers}"
    after = await h.run(hostile, "print('still usable')")
    assert after["stdout"] == "still usable\n"
    assert await h.actor_pid(hostile) == actor, "the session's actor was replaced"


async def pids_in(h: Any, session: str, path: str) -> list[int]:
    text = await h.read_text(session, path)
    return [int(p) for p in (text or "").split()]


async def test_hang_past_timeout(hostile: str, contained: int, h: Any) -> None:
    result = await h.run(
        hostile,
        "import os, time\nopen('hang.pid', 'w').write(f'{os.getpid()}\\n')\ntime.sleep(300)\n",
        timeout_seconds=1,
    )
    assert result["timed_out"] is True
    assert result["termination"] == "term"
    assert result["exit_code"] == -signal.SIGTERM
    assert await h.wait_dead(await pids_in(h, hostile, "hang.pid"), within=0.5) == []


async def test_ignores_sigterm(hostile: str, contained: int, h: Any) -> None:
    result = await h.run(
        hostile,
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open('stubborn.pid', 'w').write(f'{os.getpid()}\\n')\n"
        "print('ignoring TERM', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n",
        timeout_seconds=1,
    )
    assert result["timed_out"] is True
    assert result["termination"] == "kill"
    assert result["exit_code"] == -signal.SIGKILL
    assert result["stdout"] == "ignoring TERM\n"
    assert await h.wait_dead(await pids_in(h, hostile, "stubborn.pid"), within=0.5) == []


async def test_prints_a_gigabyte(client: AsyncClient, hostile: str, contained: int, h: Any) -> None:
    cap = (await client.get_session(hostile))["limits"]["max_output_bytes"]
    result = await h.run(
        hostile,
        "import sys\n"
        "chunk = 'x' * (1 << 20)\n"
        "for _ in range(1024):\n"
        "    sys.stdout.write(chunk)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('done\\n')\n",
        timeout_seconds=600,
    )
    assert result["timed_out"] is False, "the flood must be drained, not stall until timeout"
    assert result["exit_code"] == 0
    assert result["truncated"] is True
    assert len(result["stdout"]) == cap
    assert set(result["stdout"]) == {"x"}
    assert result["stderr"] == "done\n"


async def test_double_forked_daemon(hostile: str, contained: int, h: Any) -> None:
    result = await h.run(
        hostile,
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon.pid', 'w').write(f'{os.getpid()}\\n')\n"
        "        os.write(w, b'x')\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n"
        "print('parent leaves')\n",
        timeout_seconds=60,
    )
    assert result["stdout"] == "parent leaves\n"
    assert result["timed_out"] is False
    daemon = await pids_in(h, hostile, "daemon.pid")
    assert len(daemon) == 1
    assert not h.alive(daemon[0]), "a double-forked daemon outlived its call"


@pytest.mark.xfail(
    strict=True,
    reason="documented gap (codegen_ray/process.py docstring): a daemon that leaves the "
    "session and wipes CODEGEN_RUN_ID from its environment is not recognised by the sweep "
    "once the main process has exited; closed only by the bubblewrap tier (pid namespace)",
)
async def test_daemon_that_also_clears_its_environment(hostile: str, h: Any) -> None:
    result = await h.run(
        hostile,
        "import os, sys\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('ghost.pid', 'w').write(f'{os.getpid()}\\n')\n"
        "        os.write(w, b'x')\n"
        "        os.execve(sys.executable, [sys.executable, '-c',\n"
        "                  'import time; time.sleep(60)'], {})\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n",
        timeout_seconds=60,
    )
    ghost = (await pids_in(h, hostile, "ghost.pid"))[0]
    try:
        assert result["exit_code"] == 0
        assert not h.alive(ghost), "an env-wiping daemon outlived its call"
    finally:
        if h.alive(ghost):
            os.kill(ghost, signal.SIGKILL)  # ours to clean up: the product missed it


async def test_bounded_fork_bomb(hostile: str, contained: int, h: Any) -> None:
    result = await h.run(
        hostile,
        "import os, time\n"
        "def record():\n"
        "    fd = os.open('bomb.pids', os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "    os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "    os.close(fd)\n"
        "for depth in range(6):\n"  # 2**6 = 64 processes
        "    if os.fork() == 0 and depth % 2:\n"
        "        os.setsid()  # some try to leave the process group too\n"
        "record()\n"
        "time.sleep(300)\n",
        timeout_seconds=3,
    )
    assert result["timed_out"] is True
    pids = await pids_in(h, hostile, "bomb.pids")
    assert len(pids) > 8, "the bomb did not go off"
    assert [p for p in pids if h.alive(p)] == [], "fork bomb processes outlived the call"

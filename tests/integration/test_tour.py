"""The one-minute tour, through the SDK and through ``codegen-ray call``."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from codegen_ray.client import AsyncClient

CLI = str(Path(sys.executable).parent / "codegen-ray")
HELLO = "import sys\nprint('hello from', sys.argv[1])\n"


async def test_write_run_install_import_list(client: AsyncClient, session: str) -> None:
    written = await client.call(
        "fs.write", {"path": "hello.py", "contents": HELLO}, session_id=session
    )
    assert written.structured == {"path": "hello.py", "bytes_written": len(HELLO)}

    run = await client.call(
        "run.python", {"file": "hello.py", "args": ["tour"]}, session_id=session
    )
    assert not run.is_error
    assert run.structured["stdout"] == "hello from tour\n"
    assert run.structured["exit_code"] == 0
    assert run.structured["timed_out"] is False

    before = await client.call("run.python", {"code": "import iniconfig"}, session_id=session)
    assert before.structured["exit_code"] != 0
    assert "ModuleNotFoundError" in before.structured["stderr"]

    install = await client.call("pkg.install", {"packages": "iniconfig"}, session_id=session)
    assert not install.is_error, install.text
    assert install.structured["exit_code"] == 0
    assert "iniconfig" in [p["name"] for p in install.structured["installed"]]

    after = await client.call(
        "run.python",
        {"code": "import iniconfig; print(iniconfig.IniConfig.__name__)"},
        session_id=session,
    )
    assert after.structured["stdout"] == "IniConfig\n", after.structured["stderr"]

    listed = await client.call("pkg.list", {}, session_id=session)
    assert "iniconfig" in [p["name"] for p in listed.structured["packages"]]

    files = await client.call("fs.list", {}, session_id=session)
    entries = {f["path"]: f for f in files.structured["files"]}
    assert entries["hello.py"]["size_bytes"] == len(HELLO)
    assert entries["hello.py"]["is_directory"] is False
    assert files.structured["total_count"] == len(files.structured["files"])


async def cli(target: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        "--target",
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_call(target: str, session: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    code, out, err = await cli(
        target, "call", tool, "--session", session, "--json", json.dumps(args)
    )
    assert code == 0, f"codegen-ray call {tool} exited {code}: {err}"
    parsed = json.loads(out)
    assert isinstance(parsed, dict)
    return parsed


async def test_cli_call(gateway: Any, session: str) -> None:
    target = gateway.target
    written = await cli_call(target, session, "fs.write", {"path": "hello.py", "contents": HELLO})
    assert written["bytes_written"] == len(HELLO)

    run = await cli_call(target, session, "run.python", {"file": "hello.py", "args": ["cli"]})
    assert run["stdout"] == "hello from cli\n"
    assert run["exit_code"] == 0

    listed = await cli_call(target, session, "fs.list", {})
    assert "hello.py" in [f["path"] for f in listed["files"]]

    code, out, err = await cli(
        target,
        "call",
        "fs.read",
        "--session",
        session,
        "--json",
        json.dumps({"path": "missing.txt"}),
    )
    assert code != 0
    assert "NOT_FOUND" in err

    code, out, err = await cli(
        target,
        "call",
        "run.python",
        "--session",
        session,
        "--json",
        json.dumps({"code": "raise SystemExit(3)"}),
    )
    assert code == 0, "a program's own exit code is a result, not a tool failure"
    assert json.loads(out)["exit_code"] == 3

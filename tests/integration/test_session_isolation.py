"""Two sessions never see each other's files, and a session's own symlinks lead nowhere."""

from __future__ import annotations

import os
from typing import Any

import pytest

from codegen_ray.client import AsyncClient
from codegen_ray.errors import CodegenError, ErrorCode

SECRET = "only for A\n"


def passwd_untouched() -> bool:
    with open("/etc/passwd") as f:
        return "root::0:0::/:/bin/sh" not in f.read() and "codegen-owned" not in os.listdir("/etc")


async def expect(
    code: ErrorCode, client: AsyncClient, tool: str, args: dict[str, Any], session: str
) -> CodegenError:
    with pytest.raises(CodegenError) as exc_info:
        await client.call(tool, args, session_id=session)
    assert exc_info.value.code == code, f"{tool} {args}: {exc_info.value}"
    return exc_info.value


async def test_sessions_do_not_see_each_other(client: AsyncClient, new_session: Any) -> None:
    a, b = await new_session(), await new_session()
    await client.call("fs.write", {"path": "secret/a.txt", "contents": SECRET}, session_id=a)

    await expect(ErrorCode.NOT_FOUND, client, "fs.read", {"path": "secret/a.txt"}, b)
    await expect(ErrorCode.NOT_FOUND, client, "fs.list", {"path": "secret"}, b)
    listed = await client.call("fs.list", {"recursive": True}, session_id=b)
    assert all("secret" not in f["path"] for f in listed.structured["files"])

    for escape in (
        f"../{a}",
        f"../../{a}",
        f"../../{a}/workspace/secret/a.txt",
        f"secret/../../../{a}/workspace/secret/a.txt",
    ):
        await expect(ErrorCode.PERMISSION_DENIED, client, "fs.read", {"path": escape}, b)
        await expect(ErrorCode.PERMISSION_DENIED, client, "fs.list", {"path": escape}, b)
        await expect(
            ErrorCode.PERMISSION_DENIED,
            client,
            "fs.write",
            {"path": escape, "contents": "overwritten by B"},
            b,
        )
        await expect(
            ErrorCode.PERMISSION_DENIED, client, "fs.delete", {"path": escape, "recursive": True}, b
        )

    # Same name, different sessions: each sees its own.
    await client.call("fs.write", {"path": "secret/a.txt", "contents": "B's\n"}, session_id=b)
    read_a = await client.call("fs.read", {"path": "secret/a.txt"}, session_id=a)
    assert read_a.structured["contents"] == SECRET


async def test_symlinks_made_by_code_do_not_escape(
    client: AsyncClient, session: str, h: Any
) -> None:
    made = await h.run(
        session,
        "import os\n"
        "os.symlink('/etc', 'evil')\n"
        "os.symlink('/etc/passwd', 'pw')\n"
        "os.symlink('..', 'up')\n"
        "os.mkdir('d')\n"
        "os.symlink('/tmp', 'd/tmp')\n",
    )
    assert made["exit_code"] == 0, made["stderr"]

    denied = ErrorCode.PERMISSION_DENIED
    for path in ("evil/passwd", "pw", "up/workspace/pw", "d/tmp"):
        await expect(denied, client, "fs.read", {"path": path}, session)
    err = await expect(denied, client, "fs.read", {"path": "evil/passwd"}, session)
    assert "evil" in err.message
    await expect(denied, client, "fs.list", {"path": "evil"}, session)
    await expect(
        denied, client, "fs.write", {"path": "evil/codegen-owned", "contents": "x"}, session
    )
    await expect(
        denied, client, "fs.write", {"path": "pw", "contents": "root::0:0::/:/bin/sh"}, session
    )
    await expect(
        denied, client, "fs.write", {"path": "pw", "contents": "x", "append": True}, session
    )
    await expect(denied, client, "run.python", {"file": "evil/passwd"}, session)
    assert passwd_untouched()

    # Deleting a link removes the link, never what it points to.
    await client.call("fs.delete", {"path": "evil"}, session_id=session)
    listed = await client.call("fs.list", {}, session_id=session)
    assert "evil" not in [f["path"] for f in listed.structured["files"]]
    assert passwd_untouched()


@pytest.mark.skipif(os.geteuid() != 0, reason="the own-uid isolation tier needs root")
async def test_code_in_one_session_cannot_read_another(
    client: AsyncClient, new_session: Any, h: Any
) -> None:
    a, b = await new_session(), await new_session()
    await client.call("fs.write", {"path": "a.txt", "contents": SECRET}, session_id=a)
    where = await h.run(a, "import os; print(os.path.abspath('a.txt'))")
    path = where["stdout"].strip()
    assert where["exit_code"] == 0 and path.endswith(f"{a}/workspace/a.txt"), where

    # B's code, by absolute path: the file, A's workspace and A's tmp are all closed.
    probe = (
        "import os, sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p).read() if os.path.basename(p) == 'a.txt' else os.listdir(p)\n"
        "        print('OPEN', p)\n"
        "    except PermissionError:\n"
        "        print('DENIED', p)\n"
    )
    session_a = os.path.dirname(os.path.dirname(path))
    targets = [path, os.path.dirname(path), f"{session_a}/tmp", session_a]
    stolen = await h.run(b, probe, args=targets)
    assert stolen["stdout"].split("\n")[:-1] == [f"DENIED {t}" for t in targets], stolen
    assert SECRET not in stolen["stdout"]

    # A's own code still reads, changes and makes its files, fs.write's included.
    mine = await h.run(
        a,
        "import os\n"
        "print(open('a.txt').read(), end='')\n"
        "open('a.txt', 'a').write('more\\n')\n"
        "os.makedirs('made/by/code', exist_ok=True)\n"
        "print(os.getuid() != 0, os.getuid() == os.stat('.').st_uid)\n",
    )
    assert mine["exit_code"] == 0, mine["stderr"]
    assert mine["stdout"] == SECRET + "True True\n"
    read = await client.call("fs.read", {"path": "a.txt"}, session_id=a)
    assert read.structured["contents"] == SECRET + "more\n"

    # Installs (as root, into the root-owned venv) still import as the session uid.
    await client.call("pkg.install", {"packages": ["iniconfig"]}, session_id=b)
    imported = await h.run(b, "import iniconfig, os; print(iniconfig.__name__, os.getuid() != 0)")
    assert imported["stdout"] == "iniconfig True\n", imported

    # So does the persistent kernel, running as the session's uid too.
    steal = f"try:\n    open({path!r})\nexcept PermissionError:\n    print('denied')"
    executed = await client.call("kernel.execute", {"code": steal}, session_id=b)
    assert "denied" in executed.structured["stdout"], executed.structured

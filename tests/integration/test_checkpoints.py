"""Checkpoint store faults seen from a client: the session keeps working, the call says so."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from codegen_ray.client import AsyncClient


@contextmanager
def store_unreachable(store: Path) -> Iterator[None]:
    """Put a regular file where the store's directory was (root ignores chmod 000)."""
    aside = store.with_name(store.name + ".away")
    os.rename(store, aside)
    store.write_bytes(b"not a directory")
    try:
        yield
    finally:
        store.unlink()
        os.rename(aside, store)


async def test_unreachable_store_warns_and_the_next_checkpoint_retries(
    client: AsyncClient, session: str, gateway: Any
) -> None:
    store = gateway.root / "state" / "checkpoints"
    first = await client.call("fs.write", {"path": "a.txt", "contents": "one"}, session_id=session)
    assert "checkpoint_warning" not in first.structured
    payload = os.urandom(2048)

    with store_unreachable(store):
        written = await client.call(
            "fs.write",
            {"path": "b.bin", "contents": base64.b64encode(payload).decode(), "encoding": "base64"},
            session_id=session,
        )
        assert not written.is_error, written.text
        warning = written.structured["checkpoint_warning"]
        assert "checkpoint failed" in warning and "not yet durable" in warning, warning
        # The session keeps working: reads, runs and more writes.
        read = await client.call("fs.read", {"path": "a.txt"}, session_id=session)
        assert read.structured["contents"] == "one"
        run = await client.call(
            "run.python", {"code": "print(len(open('b.bin','rb').read()))"}, session_id=session
        )
        assert run.structured["stdout"].strip() == "2048"
        assert "checkpoint_warning" in run.structured

    again = await client.call("fs.write", {"path": "c.txt", "contents": "3"}, session_id=session)
    assert "checkpoint_warning" not in again.structured, again.structured
    summary = await client.checkpoint(session, "after the outage")
    latest = (await client.list_checkpoints(session))[0]
    assert latest["checkpoint_id"] == summary["checkpoint_id"]
    assert latest["file_count"] == 3  # a.txt, b.bin (written during the outage), c.txt

    restored = await client.restore(summary["checkpoint_id"], new_session=True)
    try:
        read = await client.call(
            "fs.read", {"path": "b.bin", "encoding": "base64"}, session_id=restored["session_id"]
        )
        assert base64.b64decode(read.structured["contents"]) == payload
    finally:
        await client.destroy_session(restored["session_id"])

"""Readable text for a tool result: what an LLM sees beside the structured result."""

from __future__ import annotations

import json
from typing import Any


def render_text(tool: str, result: dict[str, Any]) -> str:
    text = _render(tool, result)
    if result.get("checkpoint_warning"):
        text += f"\n[warning: {result['checkpoint_warning']}]"
    return text


def _render(tool: str, result: dict[str, Any]) -> str:
    if tool == "run.python":
        return _render_run(result)
    if tool == "kernel.execute":
        return _render_kernel(result)
    if tool == "session.checkpoint":
        return (
            f"checkpoint {result.get('checkpoint_id', '')}: {result.get('file_count', 0)} files, "
            f"{result.get('total_bytes', 0)} bytes, {len(result.get('packages', []))} packages "
            "(kernel variables are not saved)"
        )
    if tool == "session.restore":
        return (
            f"restored into session {result.get('session_id', '')} "
            f"(state {result.get('state', '')}); pass this session_id to work in it. "
            "Kernel variables start empty."
        )
    if tool == "pkg.install":
        installed = ", ".join(f"{p['name']}=={p['version']}" for p in result.get("installed", []))
        if result.get("exit_code", 0) != 0:
            return f"install failed (exit {result['exit_code']}):\n{result.get('output', '')}"
        return f"installed: {installed}" if installed else "already installed; nothing changed"
    if tool == "artifact.get":
        return _render_artifact(result)
    if tool == "fs.read" and result.get("encoding") == "utf-8":
        return str(result.get("contents", ""))
    return json.dumps(result, indent=1, ensure_ascii=False)


def _render_run(result: dict[str, Any]) -> str:
    parts = [result.get("stdout", "")]
    if result.get("stderr"):
        parts.append(f"[stderr]\n{result['stderr']}")
    if result.get("timed_out"):
        parts.append(f"[timed out after {result.get('duration_ms', 0)} ms; the process was killed]")
    elif result.get("exit_code", 0) != 0:
        parts.append(f"[exit code {result['exit_code']}]")
    if result.get("truncated"):
        parts.append("[output truncated: write large output to a file and read it in pages]")
    if result.get("changed_files"):
        parts.append(f"[files created or changed: {', '.join(result['changed_files'])}]")
    return "\n".join(p for p in parts if p) or "[no output]"


TRACEBACK_TAIL = 12  # lines: where the error happened, not the whole stack


def _render_kernel(result: dict[str, Any]) -> str:
    parts = [result.get("stdout", "")]
    if result.get("stderr"):
        parts.append(f"[stderr]\n{result['stderr']}")
    if result.get("result") is not None:
        parts.append(str(result["result"]))
    kinds = [o.get("mime_type", "") for o in result.get("outputs", [])]
    if kinds:
        parts.append(f"[rich outputs: {', '.join(kinds)}]")
    error = result.get("error")
    if error:
        lines = "\n".join(error.get("traceback", [])).splitlines()
        headline = f"{error.get('ename', '')}: {error.get('evalue', '')}"
        tail = [line for line in lines[-TRACEBACK_TAIL:] if line.strip()]
        if tail and tail[-1].strip() == headline.strip():
            tail.pop()
        parts.append("\n".join([f"[error] {headline}", *tail]))
    if result.get("message"):
        parts.append(f"[{result['message']}]")
    elif result.get("timed_out"):
        parts.append("[timed out: the code was interrupted]")
    if result.get("state_lost") and not result.get("message"):
        parts.append("[kernel state was lost: re-run the code that defines what you need]")
    return "\n".join(p for p in parts if p) or "[no output]"


def _render_artifact(result: dict[str, Any]) -> str:
    return (
        f"{result.get('path', '')}: {result.get('content_type', '')}, "
        f"{result.get('size_bytes', 0)} bytes (base64 in the structured result's data)"
    )

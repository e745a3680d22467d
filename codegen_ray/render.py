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
    return "\n".join(p for p in parts if p) or "[no output]"


def _render_artifact(result: dict[str, Any]) -> str:
    return (
        f"{result.get('path', '')}: {result.get('content_type', '')}, "
        f"{result.get('size_bytes', 0)} bytes (base64 in the structured result's data)"
    )

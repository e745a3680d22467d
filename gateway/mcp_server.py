"""The MCP front: the tool registry served through the official SDK's low-level ``Server``.

The low-level server (not ``MCPServer``) is used so that tool schemas come from our
pydantic models rather than from function signatures. The server talks to a
``ToolBackend``: the in-process ``Dispatcher`` inside the gateway, or a gRPC client
for ``codegen-ray mcp --target`` (see ``codegen_ray.mcp_stdio``), so one piece of
code serves MCP over stdio, streamable HTTP and SSE.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from codegen_ray import __version__
from codegen_ray.errors import CodegenError, ErrorCode
from codegen_ray.render import render_text
from codegen_ray.session import Event, SessionSpec
from codegen_ray.tools import TOOLS, ToolOutcome, artifact_uri

log = logging.getLogger(__name__)

EventSink = Callable[[Event], Awaitable[None]]
SESSION_META_KEY = "codegen-ray/session_id"
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}
# kernel.execute rich outputs: images as image content, the rest as their source text.
KERNEL_IMAGE_TYPES = frozenset({"image/png", "image/jpeg"})
KERNEL_TEXT_TYPES = frozenset({"text/html", "text/markdown", "image/svg+xml", "text/plain"})
INSTRUCTIONS = (
    "A code sandbox. Your connection gets its own session (workspace, venv, processes) on "
    "its first tool call; session.info tells its id. To carry on in a session after "
    "reconnecting, pass session_id. Set async=true on a slow call to get a task id at once."
)
# What to do next, by error code; appended to the message an LLM reads.
NEXT_STEP = {
    ErrorCode.INVALID_ARGUMENT: "Fix the arguments (see the tool's input schema) and call again.",
    ErrorCode.NOT_FOUND: "Check the name or id; list what exists first.",
    ErrorCode.PERMISSION_DENIED: "That is outside what this sandbox allows; stay in the workspace.",
    ErrorCode.RESOURCE_EXHAUSTED: "Free something up or ask for less, then retry.",
    ErrorCode.DEADLINE_EXCEEDED: "Retry with a larger timeout_seconds, or split the work.",
    ErrorCode.FAILED_PRECONDITION: "Wait for the state the message names, then retry.",
    ErrorCode.CANCELLED: "The call was cancelled; call it again if you still need it.",
    ErrorCode.UNAVAILABLE: "Temporary: retry in a moment.",
    ErrorCode.INTERNAL: "Retry once; if it fails again, try a different approach.",
}
UNKNOWN_SESSION_STEP = (
    "Check the session_id, or call again without session_id to work in this connection's "
    "own session (a new, empty one)."
)


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    requires_session: bool
    read_only: bool


class ToolBackend(ABC):
    """Where the MCP server sends its calls. Errors are raised as ``CodegenError``."""

    @abstractmethod
    async def list_tools(self) -> list[ToolInfo]: ...

    @abstractmethod
    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        session_id: str = "",
        *,
        run_async: bool = False,
        on_event: EventSink | None = None,
    ) -> ToolOutcome:
        """Run a tool; cancelling the awaiting task must kill the tool's process."""

    @abstractmethod
    async def create_session(self) -> str:
        """Create a session with default settings; returns its id."""


def registry_tools() -> list[ToolInfo]:
    return [
        ToolInfo(
            s.name,
            s.description,
            s.input_schema(),
            s.output_schema(),
            s.requires_session,
            s.read_only,
        )
        for s in TOOLS.values()
    ]


class DispatcherBackend(ToolBackend):
    """In the gateway process: straight onto the ``Dispatcher``."""

    def __init__(self, dispatcher: Any) -> None:  # gateway.dispatch.Dispatcher; imports Ray
        self.dispatcher = dispatcher

    async def list_tools(self) -> list[ToolInfo]:
        return registry_tools()

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        session_id: str = "",
        *,
        run_async: bool = False,
        on_event: EventSink | None = None,
    ) -> ToolOutcome:
        outcome = await self.dispatcher.call(
            name, arguments, session_id, run_async=run_async, on_event=on_event
        )
        return outcome

    async def create_session(self) -> str:
        info = await self.dispatcher.router.create(SessionSpec(), node="")
        return str(info["session_id"])


# --- schemas -------------------------------------------------------------------------

TASK_STARTED = {
    "type": "object",
    "title": "TaskStarted",
    "description": "Returned at once when the call was made with async=true.",
    "properties": {"task_id": {"type": "string"}},
    "required": ["task_id"],
}
SESSION_PROPERTIES = {
    "session_id": {
        "type": "string",
        "description": "Run in this existing session instead of the connection's own.",
    },
    "async": {
        "type": "boolean",
        "description": "Return a task id at once; then poll task.get_status and task.get_result.",
    },
}


def mcp_input_schema(tool: ToolInfo) -> dict[str, Any]:
    schema = dict(tool.input_schema)
    if tool.requires_session:
        schema["properties"] = {**schema.get("properties", {}), **SESSION_PROPERTIES}
    schema.setdefault("type", "object")
    return schema


def mcp_output_schema(tool: ToolInfo) -> dict[str, Any] | None:
    """The result model's schema; for session tools, or the task id of an async call."""
    schema = dict(tool.output_schema)
    if schema.get("type") != "object":
        return None  # MCP (through 2025-11-25) wants an object schema at the root
    if not tool.requires_session:
        return schema
    defs = schema.pop("$defs", None)
    either: dict[str, Any] = {"type": "object", "anyOf": [schema, TASK_STARTED]}
    if defs:
        either["$defs"] = defs  # $refs point at the root: keep the definitions there
    return either


def mcp_tool(tool: ToolInfo) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=mcp_input_schema(tool),
        output_schema=mcp_output_schema(tool),
        annotations=types.ToolAnnotations(
            read_only_hint=tool.read_only, destructive_hint=False if tool.read_only else None
        ),
    )


# --- results -------------------------------------------------------------------------


def error_result(error: CodegenError, hint: str | None = None) -> types.CallToolResult:
    """The one place a CodegenError becomes an MCP isError result."""
    text = f"{error.code.value}: {error.message}"
    hint = hint or NEXT_STEP.get(error.code)
    if error.retriable and hint is None:
        hint = "Temporary: retry in a moment."
    if hint:
        text = f"{text}\n{hint}"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def image_content(
    name: str, arguments: dict[str, Any], result: dict[str, Any]
) -> types.ImageContent | None:
    if name == "artifact.get":
        path, data = result.get("path", ""), result.get("data", "")
    elif name == "fs.read" and result.get("encoding") == "base64":
        whole = not arguments.get("offset") and arguments.get("length") is None
        path, data = (arguments.get("path", ""), result.get("contents", "")) if whole else ("", "")
    else:
        return None
    mime = IMAGE_TYPES.get(str(path).rsplit(".", 1)[-1].lower()) if "." in str(path) else None
    return types.ImageContent(data=data, mime_type=mime) if mime and data else None


def kernel_outputs(result: dict[str, Any]) -> list[types.ContentBlock]:
    blocks: list[types.ContentBlock] = []
    for output in result.get("outputs", []):
        mime, data = output.get("mime_type", ""), output.get("data", "")
        if mime in KERNEL_IMAGE_TYPES:
            blocks.append(types.ImageContent(data=data, mime_type=mime))
        elif mime in KERNEL_TEXT_TYPES:
            blocks.append(types.TextContent(text=data))
    return blocks


def resource_links(result: dict[str, Any]) -> list[types.ContentBlock]:
    """The files a run created or changed, by artifact:// URI (artifact.get takes it as id)."""
    return [
        types.ResourceLink(
            uri=artifact_uri(path),
            name=path,
            mime_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
        )
        for path in result.get("changed_files", [])
    ]


def tool_result(
    name: str, arguments: dict[str, Any], outcome: ToolOutcome, session_id: str, note: str
) -> types.CallToolResult:
    meta = {SESSION_META_KEY: session_id} if session_id else None
    if outcome.task_id:
        text = (
            f"started task {outcome.task_id}: poll task.get_status, then task.get_result "
            "(task.cancel stops it)"
        )
        structured: dict[str, Any] = {"task_id": outcome.task_id}
        content: list[types.ContentBlock] = [types.TextContent(text=text)]
    else:
        structured = outcome.result or {}
        content = [types.TextContent(text=render_text(name, structured))]
        image = image_content(name, arguments, structured)
        if image is not None:
            content.append(image)
        if name == "kernel.execute":
            content.extend(kernel_outputs(structured))
        if name == "run.python":
            content.extend(resource_links(structured))
    if note:
        content.append(types.TextContent(text=note))
    return types.CallToolResult(
        content=content, structured_content=structured, is_error=outcome.is_error, _meta=meta
    )


def _progress_message(event: Event) -> str | None:
    if event.get("type") == "output":
        data = event.get("data", b"")
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    if event.get("type") == "progress":
        return str(event.get("message", ""))
    return None


# --- the server ----------------------------------------------------------------------


def connection_key(ctx: ServerRequestContext[Any, Any]) -> object | None:
    """What identifies the client's connection, or None on a connectionless exchange.

    On the handshake protocol versions the SDK keeps one ``Connection`` per client
    connection (the stdio pipe, an SSE stream, a streamable-HTTP ``Mcp-Session-Id``).
    The 2026-07-28 protocol has no connections: every request gets a fresh
    ``Connection``; on a duplex pipe (stdio, SSE) the standalone channel it shares
    still marks the connection, on single-exchange HTTP nothing does.
    The low-level context reaches the ``Connection`` only through ``ctx.session``.
    """
    connection = getattr(ctx.session, "_connection", None)
    if connection is None:
        return None
    if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return connection.outbound if connection.has_standalone_channel else None
    return connection


class McpFront:
    """The MCP server, and the connection -> session map (a closing connection keeps it)."""

    def __init__(self, backend: ToolBackend, *, name: str = "codegen-ray") -> None:
        self.backend = backend
        self._tools: dict[str, ToolInfo] | None = None
        self._sessions: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[object, asyncio.Lock] = weakref.WeakKeyDictionary()
        self.server: Server[Any] = Server(
            name,
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def tools(self) -> dict[str, ToolInfo]:
        if self._tools is None:
            self._tools = {t.name: t for t in await self.backend.list_tools()}
        return self._tools

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[mcp_tool(t) for t in (await self.tools()).values()])

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tools = await self.tools()
        tool = tools.get(params.name)
        if tool is None:  # a protocol error, as the MCP spec asks for unknown tools
            raise MCPError(
                types.INVALID_PARAMS, f"unknown tool {params.name!r}; available: {', '.join(tools)}"
            )
        arguments = dict(params.arguments or {})
        try:
            session_id, run_async, note = "", False, ""
            if tool.requires_session:
                session_id, run_async, note = await self._session_for(ctx, arguments)
            outcome = await self.backend.call(
                tool.name,
                arguments,
                session_id,
                run_async=run_async,
                on_event=self._progress_sink(ctx) if not run_async else None,
            )
        except CodegenError as exc:
            if exc.code == ErrorCode.NOT_FOUND and "session_id" in (params.arguments or {}):
                return error_result(exc, UNKNOWN_SESSION_STEP)
            return error_result(exc)
        except Exception as exc:  # noqa: BLE001 - no traceback of ours reaches the model
            log.exception("MCP call %s failed", tool.name)
            return error_result(CodegenError(ErrorCode.INTERNAL, f"{tool.name} failed: {exc}"))
        return tool_result(tool.name, arguments, outcome, session_id, note)

    async def _session_for(
        self, ctx: ServerRequestContext[Any, Any], arguments: dict[str, Any]
    ) -> tuple[str, bool, str]:
        """Pop session_id and async from the arguments; find or make the session."""
        session_id = arguments.pop("session_id", None)
        run_async = arguments.pop("async", False)
        if not isinstance(run_async, bool):
            raise CodegenError(ErrorCode.INVALID_ARGUMENT, "async must be true or false")
        if session_id is not None:
            if not (isinstance(session_id, str) and session_id):
                raise CodegenError(ErrorCode.INVALID_ARGUMENT, "session_id must be a string id")
            return session_id, run_async, ""  # the backend says so if it does not exist
        key = connection_key(ctx)
        if key is None:
            session_id = await self.backend.create_session()
            return session_id, run_async, _new_session_note(session_id, stateless=True)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # two first calls at once must not make two sessions
            if key in self._sessions:
                return self._sessions[key], run_async, ""
            session_id = await self.backend.create_session()
            self._sessions[key] = session_id
        log.info("MCP connection got session %s", session_id)
        return session_id, run_async, _new_session_note(session_id, stateless=False)

    def _progress_sink(self, ctx: ServerRequestContext[Any, Any]) -> EventSink | None:
        if not (ctx.meta or {}).get("progress_token"):
            return None
        count = 0

        async def sink(event: Event) -> None:
            nonlocal count
            message = _progress_message(event)
            if message is not None:
                count += 1
                await ctx.session.report_progress(count, None, message)

        return sink


def _new_session_note(session_id: str, *, stateless: bool) -> str:
    if stateless:
        return (
            f"[created session {session_id}; this exchange has no connection to keep it by, "
            "so pass session_id to use it again]"
        )
    return f"[this connection's session is {session_id}; pass session_id to return to it later]"


def build_server(backend: ToolBackend) -> McpFront:
    return McpFront(backend)

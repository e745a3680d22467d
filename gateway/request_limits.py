"""An oversized MCP request gets a JSON-RPC error that the client shows, not a bare 413.

The SDK's transports reject bodies over their limit with a plain-text 413, which its
streamable-HTTP client reports only as "Server returned an error response". This
checks the declared size first and answers with a JSON-RPC error (id null) that says
what to do instead; the SDK's own check still guards bodies sent without a length.
"""

from __future__ import annotations

import mcp_types as types
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MB = 1024 * 1024


class JsonRpcBodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_REQUEST_BODY_SIZE) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                response = JSONResponse(too_large(int(declared), self.max_bytes), status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def too_large(size: int, limit: int) -> dict[str, object]:
    message = (
        f"request too large: {size / MB:.1f} MB, and one MCP request may carry at most "
        f"{limit / MB:.1f} MB. Send a big file in pieces (fs.write with append=true), or "
        "have code in the sandbox download or generate it."
    )
    return {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": types.INVALID_REQUEST, "message": message},
    }

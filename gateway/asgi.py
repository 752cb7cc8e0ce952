"""ASGI plumbing shared by the middleware and the doors: the callable types and body reading."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import ErrorKind, GatewayError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise GatewayError(ErrorKind.INVALID_REQUEST, "client disconnected before sending the body")
        part = msg.get("body", b"")
        size += len(part)
        if size > limit:
            raise GatewayError(ErrorKind.BODY_TOO_LARGE, f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(part)
        if not msg.get("more_body", False):
            return b"".join(chunks)

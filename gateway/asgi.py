"""ASGI plumbing shared by the middleware and the doors: the callable types and body reading."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import ErrorKind, GatewayError
from gateway.types import PARSED_BODY

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LARGE_BODY = 256 * 1024  # bytes: bodies this large are parsed and serialised in a worker thread


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


async def parse_json(raw: bytes) -> Any:
    """``orjson.loads``, off the event loop for a large body; raises ``orjson.JSONDecodeError``."""
    return orjson.loads(raw) if len(raw) < LARGE_BODY else await asyncio.to_thread(orjson.loads, raw)


async def buffer_body(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Read the whole body and return it with a ``receive`` that replays it once."""
    body = await read_body(receive, limit)
    return body, replaying(body, receive)  # later calls: the real receive, for disconnect detection


def replaying(body: bytes, after: Receive) -> Receive:
    """A ``receive`` whose first message is the whole ``body``; later calls go to ``after``."""
    replayed = False

    async def receive() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await after()

    return receive


async def peek_json(scope: Scope, receive: Receive, limit: int) -> tuple[Any, Receive]:
    """The request's JSON body for middleware that must look before the handler (rate limit,
    budget): parsed once and left in ``scope["state"][PARSED_BODY]`` for the handler; None when
    it is not JSON (the handler rejects it)."""
    state = scope.setdefault("state", {})
    if PARSED_BODY in state:
        return state[PARSED_BODY], receive
    raw, receive = await buffer_body(receive, limit)
    try:
        state[PARSED_BODY] = body = await parse_json(raw)
    except orjson.JSONDecodeError:
        return None, receive
    return body, receive

"""Playground requests run through the gateway's own stack, in process.

A console request becomes a real ``POST /v1/chat/completions`` through the whole
middleware stack (request id, rate limit, stages, routing, traffic record), run as
the signed-in user's ``Caller`` (``gateway.types.INTERNAL_CALLER``: a scope key, which an
HTTP client cannot set). The reply streams back as events the console's JavaScript
reads: ``meta`` (headers), ``delta`` (text), ``error`` and ``done`` (the traffic
record: verdicts, grounding, prompt and policy versions, latency, tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.asgi import replaying
from gateway.trafficlog import encode
from gateway.types import INTERNAL_CALLER, Caller

Event = tuple[str, dict[str, Any]]


def _scope(path: str, caller: Caller) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"x-gatehouse-source", b"console")],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}, INTERNAL_CALLER: caller,
    }


def _record_view(scope: dict[str, Any], grounding: dict[str, Any] | None) -> dict[str, Any]:
    rec = scope["state"].get("record")
    data: dict[str, Any] = orjson.loads(encode(rec)) if rec is not None else {}
    for k in ("request_body", "response_body"):
        data.pop(k, None)
    data.pop("extra", None)
    if grounding is not None:
        data["grounding"] = grounding
    return data


async def run_chat(stack: Any, caller: Caller, body: dict[str, Any]) -> AsyncIterator[Event]:
    """Events of one streamed chat completion through ``stack``."""
    scope = _scope("/v1/chat/completions", caller)
    payload = orjson.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = asyncio.Event()

    async def until_gone() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    receive = replaying(payload, until_gone)

    async def send(message: dict[str, Any]) -> None:
        await queue.put(message)

    async def call() -> None:
        try:
            await stack(scope, receive, send)
        finally:
            await queue.put(None)

    task = asyncio.ensure_future(call())
    status = 0
    buf = b""
    raw_error = b""
    grounding: dict[str, Any] | None = None
    try:
        while (msg := await queue.get()) is not None:
            if msg["type"] == "http.response.start":
                status = msg["status"]
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in msg.get("headers", [])}
                if "x-gatehouse-grounding" in headers:
                    with contextlib.suppress(ValueError):
                        grounding = orjson.loads(headers["x-gatehouse-grounding"])
                yield "meta", {"status": status, "request_id": headers.get("x-request-id"),
                               "prompt": headers.get("x-gatehouse-prompt"), "policy": headers.get("x-gatehouse-policy"),
                               "target": headers.get("x-gatehouse-target"), "variant": headers.get("x-gatehouse-variant")}
                continue
            chunk = msg.get("body", b"")
            if status != 200:
                raw_error += chunk
                continue
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                for ev_out in _sse_event(ev):
                    yield ev_out
        if status != 200:
            try:
                err = orjson.loads(raw_error).get("error", {})
            except (orjson.JSONDecodeError, AttributeError):
                err = {"message": raw_error.decode("utf-8", "replace")[:500]}
            yield "error", {"status": status, **err}
        await task
        yield "done", _record_view(scope, grounding)
    finally:
        gone.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _sse_event(ev: bytes) -> list[Event]:
    data = b"".join(line[6:] for line in ev.split(b"\n") if line.startswith(b"data: "))
    if not data or data == b"[DONE]":
        return []
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    if "error" in obj:
        return [("error", obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])})]
    out: list[Event] = []
    for ch in obj.get("choices") or []:
        text = (ch.get("delta") or {}).get("content")
        if text:
            out.append(("delta", {"text": text}))
        if ch.get("finish_reason"):
            out.append(("finish", {"reason": ch["finish_reason"]}))
    return out


async def call_route(app: Any, path: str, caller: Caller, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One whole JSON request to an in-process route (``/v1/feedback``) as ``caller``."""
    scope = _scope(path, caller)
    scope["state"]["caller"] = caller
    payload = orjson.dumps(body)
    out: dict[str, Any] = {"status": 500, "body": b""}

    async def disconnected() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    receive = replaying(payload, disconnected)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    try:
        data = orjson.loads(out["body"])
    except orjson.JSONDecodeError:
        data = {"error": {"message": out["body"].decode("utf-8", "replace")[:500]}}
    return int(out["status"]), data if isinstance(data, dict) else {}

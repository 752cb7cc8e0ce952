"""Any OpenAI-compatible HTTP upstream, over the app's shared httpx client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson

from gateway.config import TargetSettings
from gateway.model import END, Chunk, Reply
from gateway.protocols import chat
from gateway.providers.base import (
    TRACEPARENT,
    Payload,
    StreamReply,
    UpstreamFailure,
    chat_body,
    split_sse,
)
from gateway.types import Endpoint

REPLIES = frozenset({"chat", "completions"})  # endpoints whose replies read into the neutral model
PATHS: dict[str, str] = {
    "chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings", "moderations": "/moderations",
}


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_from(resp: httpx.Response, content: bytes) -> UpstreamFailure:
    body: dict[str, Any] | None = None
    message = f"upstream returned HTTP {resp.status_code}"
    try:
        parsed = orjson.loads(content)
        if isinstance(parsed, dict):
            body = parsed
            err = parsed.get("error")
            if isinstance(err, dict) and err.get("message"):
                message = str(err["message"])
            elif isinstance(err, str):
                message = err
    except orjson.JSONDecodeError:
        if content:
            message = f"{message}: {content[:200].decode(errors='replace')}"
    return UpstreamFailure("status", message, status=resp.status_code, retry_after=_retry_after(resp.headers), body=body)


class OpenAIProvider:
    def __init__(self, target: TargetSettings, client: httpx.AsyncClient) -> None:
        self.target = target
        self.client = client
        self.base_url = (target.base_url or "").rstrip("/")
        caps = target.capabilities or ("chat", "completions", "embeddings", "streaming", "moderations")
        self.capabilities: frozenset[str] = frozenset(caps)
        headers = {"content-type": "application/json", **target.headers}
        if target.api_key is not None and target.api_key.get_secret_value():
            headers["authorization"] = f"Bearer {target.api_key.get_secret_value()}"
        self.headers = headers
        self.header_items = list(headers.items())
        t = target.timeouts
        # read covers the whole reply; the router enforces first-token and total deadlines
        self.timeout = httpx.Timeout(connect=t.connect, read=t.total, write=t.connect, pool=t.connect).as_dict()
        self.urls = {ep: httpx.URL(self.base_url + path) for ep, path in PATHS.items()}
        # The client's send() adds auth, redirects, cookies and event hooks we never use
        # (a third of the gateway's CPU per request, measured); a transport is httpx's own
        # lower-level API, so requests go to it directly.
        self.transport: httpx.AsyncBaseTransport = client._transport

    def _request(self, endpoint: Endpoint, body: Payload) -> httpx.Request:
        content = orjson.dumps(chat_body(body, self.target.model))
        url = self.urls[endpoint]
        # Host and Content-Length given up front: httpx otherwise fills them in through
        # Headers.setdefault misses, a measurable share of the request's CPU
        headers = [*self.header_items, ("host", url.netloc.decode("ascii")), ("content-length", str(len(content)))]
        traceparent = TRACEPARENT.get()
        if traceparent is not None:
            headers.append(("traceparent", traceparent))
        return httpx.Request("POST", url, content=content, headers=headers, extensions={"timeout": self.timeout})

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await self.transport.handle_async_request(request)

    async def complete(self, endpoint: Endpoint, body: Payload) -> Reply | dict[str, Any]:
        data = await self._json(endpoint, body)
        return chat.reply_in(data) if endpoint in REPLIES else data

    async def _json(self, endpoint: Endpoint, body: Payload) -> dict[str, Any]:
        """Send the request; the upstream's JSON object (a failure for anything else)."""
        with self._failures():
            resp = await self._send(self._request(endpoint, body))
            try:
                if "content-encoding" in resp.headers:
                    content = await resp.aread()
                else:  # identity body: skip httpx's decoder layers
                    content = b"".join([chunk async for chunk in resp.stream])  # type: ignore[union-attr]
            finally:
                await resp.aclose()
        if resp.status_code >= 400:
            raise _error_from(resp, content)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure("status", "upstream returned invalid JSON", status=502) from exc
        if not isinstance(data, dict):
            raise UpstreamFailure("status", "upstream returned a non-object JSON body", status=502)
        return data

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """Translate transport exceptions at the boundary, most specific first."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise UpstreamFailure("connect", f"cannot connect to {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
            raise UpstreamFailure(kind, f"{self.base_url}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise UpstreamFailure("drop", f"{self.base_url}: {type(exc).__name__}: {exc}") from exc

    async def stream(self, endpoint: Endpoint, body: Payload) -> StreamReply:
        return StreamReply(self._events(await self._open(endpoint, body), parse_events))

    async def _open(self, endpoint: Endpoint, body: Payload) -> httpx.Response:
        """Send the request; the open streaming response (a failure for an error status)."""
        with self._failures():
            resp = await self._send(self._request(endpoint, body))
        if resp.status_code >= 400:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            raise _error_from(resp, content)
        return resp

    async def _events(self, resp: httpx.Response, decode: Callable[[list[bytes]], list[Chunk]]) -> AsyncIterator[list[Chunk]]:
        """Per upstream read, its complete SSE events' payloads decoded into chunks."""
        buf = b""
        try:
            async for chunk in resp.aiter_raw():
                buf = buf + chunk if buf else chunk
                if b"\n\n" not in buf and b"\r\n\r\n" not in buf:
                    continue
                events, buf = split_sse(buf)
                if events and (chunks := decode(events)):
                    yield chunks
        except httpx.TransportError as exc:
            raise UpstreamFailure("drop", f"upstream stream broke: {type(exc).__name__}") from exc
        finally:
            await resp.aclose()
        if buf.strip():
            events, _ = split_sse(buf + b"\n\n")
            if events and (chunks := decode(events)):
                yield chunks

    async def ready(self) -> bool:
        return True  # reachability is learnt from traffic (circuit breaker), not probed

    async def aclose(self) -> None:
        return None  # the shared client is closed by the app


def parse_event(ev: bytes) -> Chunk:
    """One Chat SSE payload as a neutral chunk that keeps its bytes (the Chat door relays them)."""
    if ev == b"[DONE]":
        return END
    try:
        data = orjson.loads(ev)
    except orjson.JSONDecodeError:
        data = None
    if type(data) is not dict:
        return Chunk("", "", [], None, 0, ev)  # not a chunk: the Chat door passes it on as it came
    return chat.chunk_in(data, ev)


def parse_events(events: list[bytes]) -> list[Chunk]:
    return [parse_event(ev) for ev in events]

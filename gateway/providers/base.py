"""The provider interface and what every provider shares (failures, SSE splitting)."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import TargetSettings
from gateway.model import Chunk, Reply, Request
from gateway.protocols import chat
from gateway.types import Endpoint

# what a provider is asked: the neutral request (chat, from any door), or the body of a legacy
# endpoint (completions, embeddings, moderations) and of in-process callers (guard routes)
Payload = Request | dict[str, Any]

# the current upstream attempt's W3C traceparent (set by gateway.tracing when tracing is on);
# providers that call an HTTP upstream send it on
TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("gatehouse_traceparent", default=None)


class UpstreamFailure(Exception):
    """What went wrong talking to a target; the router decides retry or fallback."""

    def __init__(
        self,
        kind: str,  # timeout | connect | status | drop | unsupported
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:
        if self.kind in ("timeout", "connect", "drop"):
            return True
        return self.kind == "status" and self.status is not None and (self.status == 429 or self.status >= 500)


@dataclass(slots=True)
class StreamReply:
    """An open upstream stream: ``events`` yields, per upstream read, the list of its
    complete events as neutral chunks (one client write per read, not per event); the
    upstream's own end of stream is ``gateway.model.END``."""

    events: AsyncIterator[list[Chunk]]

    async def aclose(self) -> None:
        closer = getattr(self.events, "aclose", None)
        if closer is not None:
            await closer()


class Provider(Protocol):
    target: TargetSettings
    capabilities: frozenset[str]

    async def complete(self, endpoint: Endpoint, body: Payload) -> Reply | dict[str, Any]:
        """Non-streaming call: the neutral ``Reply`` for chat and completions, the
        OpenAI-shaped JSON for embeddings and moderations."""
        ...

    async def stream(self, endpoint: Endpoint, body: Payload) -> StreamReply:
        """Open a streaming call; returns once the upstream accepted it."""
        ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


def chat_body(payload: Payload, model: str | None = None) -> dict[str, Any]:
    """The payload as a Chat Completions-shaped body (for upstreams and engines that speak it)."""
    if isinstance(payload, Request):
        return chat.request_out(payload, model)
    return payload if model is None else {**payload, "model": model}


def neutral(payload: Payload) -> Request:
    """The payload as the neutral request (an in-process caller may hand a chat body)."""
    return payload if isinstance(payload, Request) else chat.request_in(payload)


def split_sse(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split complete SSE events off ``buffer``; returns (data payloads, remainder)."""
    out: list[bytes] = []
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    *events, rest = buffer.split(b"\n\n")
    for ev in events:
        if ev.startswith(b"data: ") and b"\n" not in ev:  # the common case: one data line
            out.append(ev[6:])
            continue
        data = [line[5:].lstrip(b" ") for line in ev.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out, rest

"""Internal types the request path is built from.

The OpenAI-shaped handlers turn an HTTP request into a ``RequestContext``;
stages (guardrails, prompts, grounding, cache) and routing see only that, and
every request leaves exactly one ``TrafficRecord`` behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# the record schema lives in the bottom layer (policies, evaluators and tuning read it too)
from gatehouse_core.records import TrafficRecord as TrafficRecord
from gatehouse_core.records import Verdict as Verdict
from gateway.model import Chunk, Reply, Request
from gateway.protocols.chat import request_in

Endpoint = Literal["chat", "completions", "embeddings", "moderations", "messages", "responses"]


# scope["state"] key for the JSON request body when middleware already parsed it
# (the token rate limit does, to estimate its reservation); the API handler reuses it
PARSED_BODY = "parsed_body"
# the request headers a stage reads (sticky routing, the response cache); only these are
# decoded onto ``RequestContext.headers``
CONTEXT_HEADERS = {b"x-gatehouse-session": "x-gatehouse-session", b"cache-control": "cache-control"}
# scope["state"] key of the request's endpoint kind (set once, by the outermost middleware)
ENDPOINT = "endpoint"
# scope key the console sets on in-process requests: the Caller it runs them as. Only code
# in this process can put it there; an HTTP client controls headers, never scope keys.
INTERNAL_CALLER = "gatehouse.internal_caller"


@dataclass(slots=True)
class Caller:
    """Who is calling: resolved by auth from the API key."""

    tenant: str
    key_id: str
    models: tuple[str, ...] = ("*",)  # allowed public model names; "*" = all
    policy: str | None = None
    scopes: tuple[str, ...] = ()

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(slots=True)
class RequestContext:
    """Everything a stage may read or change about one request."""

    request_id: str
    endpoint: Endpoint
    caller: Caller
    # the body as the client sent it (parsed JSON). The legacy endpoints (completions,
    # embeddings, moderations) are served from it; a chat request of any door is `request`.
    body: dict[str, Any]
    headers: dict[str, str]  # the CONTEXT_HEADERS the request sent, lower-cased names
    record: TrafficRecord
    t0: float = field(default_factory=time.perf_counter)
    response_headers: dict[str, str] = field(default_factory=dict)
    # upstream time, subtracted to get gateway overhead
    upstream_seconds: float = 0.0
    # free-form scratch space for stages, keyed by stage name
    state: dict[str, Any] = field(default_factory=dict)
    # a stage that answers by itself (a cache hit) sets this; routing is skipped
    short_circuit: Reply | None = None
    # the route, resolved once after auth and before any stage (a gateway.routing.Route: its
    # targets, and in .settings the prompt pin, grounding and cache flag); typed loosely
    # because gateway.routing imports this module
    route: Any = None
    # the protocol-neutral request every stage reads and writes (chat requests of every door);
    # a chat body handed in as `body` (tests, tools) is read into it
    request: Request | None = None

    def __post_init__(self) -> None:
        if self.request is None and self.endpoint == "chat":
            self.request = request_in(self.body)

    @property
    def model(self) -> str:
        return self.request.model if self.request is not None else str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return self.request.stream if self.request is not None else bool(self.body.get("stream", False))


@runtime_checkable
class StreamFilter(Protocol):
    """Inspects the text of a streamed reply before the client sees it.

    ``feed`` gets each upstream chunk (a neutral ``Chunk``: its ``text`` and
    ``tool_arguments``) and returns the chunks now safe to release, in order; ``finish`` is called at
    the end of the stream and returns what was still held back. Either may
    raise ``StreamBlocked`` to end the stream with ``finish_reason:
    content_filter``.
    """

    async def feed(self, chunk: Chunk) -> list[Chunk]: ...

    async def finish(self) -> list[Chunk]: ...


class StreamBlocked(Exception):
    def __init__(self, message: str, *, rule: str, category: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.category = category
        self.detail = detail or {}


@runtime_checkable
class Stage(Protocol):
    """A step of the request pipeline (prompt injection, grounding, guardrails, cache).

    Stages run in configured order on the way in (``on_request``, may rewrite
    ``ctx.request`` or raise ``GatewayError``) and in reverse on the way out
    (``on_response`` for whole replies, ``stream_filter`` for streams).
    """

    name: str
    # True: on_request runs even after an earlier stage answered (input guardrails on a cache hit)
    runs_on_short_circuit: bool

    async def on_request(self, ctx: RequestContext) -> None: ...

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply: ...

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None: ...


class BaseStage:
    """Convenience base: every hook is a no-op."""

    name = "stage"
    runs_on_short_circuit = False  # True: on_request runs even after an earlier stage answered

    async def on_request(self, ctx: RequestContext) -> None:
        return None

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply:
        return reply

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        return None

    async def aclose(self) -> None:
        return None


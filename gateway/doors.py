"""Doors other than Chat Completions: each turns its protocol into the neutral request on the
way in and renders the neutral reply (``Reply``) or stream (``Chunk``s) in its own shape on
the way out (the Chat door's are ``chat.reply_out`` / ``chat.chunk_bytes``, in the handler), so every
stage (prompts, grounding, cache, guardrails with the streaming hold-back, rate limits,
cost, the traffic record) governs it exactly as it governs the Chat door.

``ctx.state[DOOR]`` holds the door of a request; the API handler asks it to render.
Errors on a door come from the one error table, rendered in the door's shape by the
ASGI error layer (``GatewayError.json_bytes_for``).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway import limits
from gateway.errors import ErrorKind, GatewayError
from gateway.model import Chunk, Reply, Request
from gateway.protocols import anthropic, responses
from gateway.types import RequestContext

DOOR = "door"  # ctx.state key


class StreamEncoder(Protocol):
    def chunk(self, chunk: Chunk) -> bytes: ...

    def done(self, output_tokens: int | None = None) -> bytes: ...

    def blocked(self, message: str, detail: dict[str, Any]) -> bytes: ...

    def broken(self, message: str) -> bytes: ...


class Door(Protocol):
    name: str

    async def to_core(self, rt: Any, ctx: RequestContext, body: Any) -> Request: ...

    def render(self, ctx: RequestContext, reply: Reply) -> bytes: ...

    def encoder(self, ctx: RequestContext) -> StreamEncoder: ...

    async def after(self, rt: Any, ctx: RequestContext) -> None:
        """Called once the whole reply is rendered (a stream: after its last event is rendered),
        before the client receives it, so a stored response is retrievable when the client has it."""


class MessagesDoor:
    """``POST /v1/messages`` (Anthropic Messages)."""

    name = "messages"

    async def to_core(self, rt: Any, ctx: RequestContext, body: Any) -> Request:
        return anthropic.request_in(body)

    def render(self, ctx: RequestContext, reply: Reply) -> bytes:
        return orjson.dumps(anthropic.reply_from_core(reply, ctx.model))

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        return anthropic.MessagesStreamEncoder(ctx.model)

    async def after(self, rt: Any, ctx: RequestContext) -> None:
        return None


MESSAGES = MessagesDoor()

STATE = "responses"  # ctx.state key of the Responses door's per-request state


class ResponsesDoor:
    """``POST /v1/responses`` (OpenAI Responses API); stateless unless ``store: true``."""

    name = "responses"

    async def to_core(self, rt: Any, ctx: RequestContext, body: Any) -> Request:
        history: list[dict[str, Any]] = []
        prev = body.get("previous_response_id") if isinstance(body, dict) else None
        if prev is not None:
            entry = await rt.responses.get(ctx.caller.tenant, str(prev)) if isinstance(prev, str) else None
            if entry is None:  # another tenant's response is reported exactly like a missing one
                raise GatewayError(ErrorKind.NOT_FOUND, f"No stored response with id {prev!r} (was it created with store: true?).",
                                   param="previous_response_id", code="response_not_found")
            history = entry["conversation"]
        core, turns = responses.request_in(body, history)
        store = body.get("store", False)
        if not isinstance(store, bool):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "'store' must be a boolean.", param="store")
        ctx.state[STATE] = {"id": responses.new_id("resp"), "body": body, "store": store, "conversation": [*history, *turns]}
        return core

    def render(self, ctx: RequestContext, reply: Reply) -> bytes:
        st = ctx.state[STATE]
        st["final"] = responses.response_from_core(st["id"], st["body"], reply, ctx.model)
        return orjson.dumps(st["final"])

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        st = ctx.state[STATE]
        enc = st["encoder"] = responses.ResponsesStreamEncoder(st["id"], st["body"], ctx.model)
        return enc

    async def after(self, rt: Any, ctx: RequestContext) -> None:
        st = ctx.state[STATE]
        final = st.get("final") or getattr(st.get("encoder"), "final", None)
        if st["store"] and final is not None:
            entry = {"response": final, "conversation": [*st["conversation"], *responses.output_to_core(final["output"])]}
            await rt.responses.put(ctx.caller.tenant, st["id"], entry)


RESPONSES = ResponsesDoor()
BY_ENDPOINT: dict[str, Door] = {"messages": MESSAGES, "responses": RESPONSES}


async def enter(rt: Any, ctx: RequestContext, door: Door, body: Any) -> None:
    """Translate the door's request into the neutral request; the caps apply to it as to a chat request."""
    core = await door.to_core(rt, ctx, body)
    limits.check_messages(core, rt.settings.limits)
    ctx.request = core
    ctx.endpoint = "chat"
    ctx.state[DOOR] = door

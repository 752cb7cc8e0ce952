"""Doors other than Chat Completions: each turns its protocol into the core request on the
way in and renders the core reply (or stream) in its own shape on the way out, so every
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
from gateway.protocols import anthropic
from gateway.types import RequestContext

DOOR = "door"  # ctx.state key


class StreamEncoder(Protocol):
    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def done(self, output_tokens: int | None = None) -> bytes: ...

    def blocked(self, message: str, detail: dict[str, Any]) -> bytes: ...

    def broken(self, message: str) -> bytes: ...


class Door(Protocol):
    name: str

    def to_core(self, body: Any) -> dict[str, Any]: ...

    def render(self, ctx: RequestContext, reply: dict[str, Any]) -> bytes: ...

    def encoder(self, ctx: RequestContext) -> StreamEncoder: ...


class MessagesDoor:
    """``POST /v1/messages`` (Anthropic Messages)."""

    name = "messages"

    def to_core(self, body: Any) -> dict[str, Any]:
        return anthropic.request_to_core(body)

    def render(self, ctx: RequestContext, reply: dict[str, Any]) -> bytes:
        return orjson.dumps(anthropic.reply_from_core(reply, ctx.model))

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        return anthropic.MessagesStreamEncoder(ctx.model)


MESSAGES = MessagesDoor()


def enter(ctx: RequestContext, door: Door, body: Any, caps: Any) -> None:
    """Translate the door's request into the core request; the caps apply to it as to a chat request."""
    core = door.to_core(body)
    limits.check_request("chat", core, caps)
    ctx.body = core
    ctx.endpoint = "chat"
    ctx.state[DOOR] = door

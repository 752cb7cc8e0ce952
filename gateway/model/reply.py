"""The neutral reply: choices of assistant messages, usage, finish reasons; streams as chunks
of typed deltas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.model.request import Message, Text, ToolCall

# finish reasons are the Chat names: stop, length, tool_calls, content_filter (doors map them)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    raw: dict[str, Any] | None = None  # the upstream's own usage object (details a door may pass on)


@dataclass(slots=True)
class Choice:
    index: int
    message: Message  # role assistant: Text parts, then ToolCall parts
    finish_reason: str | None = None
    filter_results: dict[str, Any] | None = None  # why a guardrail filtered it (content_filter_results)
    extra: dict[str, Any] | None = None  # e.g. logprobs, passed on to a door of the same protocol

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.message.parts if isinstance(p, Text))

    def set_text(self, text: str) -> None:
        """Replace the choice's text (keeps tool calls); an empty text drops the text part."""
        calls = [p for p in self.message.parts if not isinstance(p, Text)]
        self.message.replace(([Text(text)] if text else []) + calls)


@dataclass(slots=True)
class Reply:
    id: str
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    created: int = 0
    grounding: dict[str, Any] | None = None  # gatehouse_grounding: what the grounding stage injected
    extra: dict[str, Any] = field(default_factory=dict)  # the upstream's other top-level fields

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def text(self) -> str:
        return "".join(c.text for c in self.choices)

    @property
    def kind(self) -> str:
        """The protocol object the upstream answered with (``chat.completion``, or
        ``text_completion`` for the legacy completions endpoint)."""
        obj = self.extra.get("object")
        return obj if isinstance(obj, str) else "chat.completion"


# ---- streams -------------------------------------------------------------------------------


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class ChoiceDelta:
    index: int = 0
    role: str | None = None
    text: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Chunk:
    """One stream event's worth of deltas (a usage-only chunk has no choices)."""

    id: str
    model: str
    choices: list[ChoiceDelta]
    usage: Usage | None = None
    created: int = 0
    # the upstream's own event payload when it was Chat JSON; the Chat door relays it as it
    # came until a stage changes the chunk (``set_text`` drops it)
    raw: bytes | None = None

    @property
    def text(self) -> str:
        choices = self.choices
        if len(choices) == 1:  # the common chunk: one choice (read once per chunk on the hot path)
            return choices[0].text or ""
        return "".join(c.text for c in choices if c.text)

    @property
    def tool_arguments(self) -> str:
        return "".join(tc.arguments for c in self.choices for tc in c.tool_calls or ())

    @property
    def finish_reason(self) -> str | None:
        for c in self.choices:
            if c.finish_reason:
                return c.finish_reason
        return None

    def set_text(self, text: str) -> None:
        """Put ``text`` in the first choice that carries text; the others' text is emptied."""
        self.raw = None
        for c in self.choices:
            if c.text is not None:
                c.text, text = text, ""


# the end of a stream as the upstream said it (Chat's ``data: [DONE]``): a stream that stops
# without it ended early, and the Chat door says so by not sending ``[DONE]`` either
END = Chunk("", "", [])


def assistant(text: str | None, calls: list[ToolCall] | None = None) -> Message:
    parts: list[Any] = [Text(text)] if text else []
    return Message("assistant", parts + list(calls or ()), plain=True)

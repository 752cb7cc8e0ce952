"""The neutral request: messages of typed content parts, tools, sampling, extensions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

# ---- content parts -------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    """Text in a message. ``kind`` is the part type the door named (``text``, ``input_text``,
    ``output_text``, ``refusal``; ``""`` for a bare string in a part list); ``raw`` the door's
    part dict when it carried more than the text (sent on with the text replaced)."""

    text: str
    kind: str = "text"
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class Image:
    """An image by reference: an URL or a ``data:`` URL."""

    url: str
    detail: str | None = None
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolCall:
    """The assistant calls a tool; ``arguments`` is JSON text (as the model wrote it)."""

    id: str
    name: str
    arguments: str
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolResult:
    """The result of tool call ``call_id``, as parts (text, and images where a door allows)."""

    call_id: str
    parts: list[Part]
    is_error: bool = False
    plain: bool = True  # the result was one string
    raw: dict[str, Any] | None = None  # the door's own part, when it came as one


@dataclass(slots=True)
class Opaque:
    """A part the gateway does not interpret (audio, a file, a type it has never seen),
    passed on as the door gave it. Checks that cannot read it decide what to do with it."""

    data: Any

    @property
    def kind(self) -> Any:
        return self.data.get("type") if isinstance(self.data, dict) else None


Part = Text | Image | ToolCall | ToolResult | Opaque
Path = tuple[int, ...]  # where a text is in a message: (part,) or (tool result part, its part)

# parts that carry no text for a check to read (the model gets them as they are)
NON_TEXT_KINDS = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file"})


# ---- messages ------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One turn. ``role``: system, developer, user, assistant, tool (a tool message holds
    one ``ToolResult``), or a door's legacy role (``function``).

    ``plain``: the content was one string (or null), and goes out as one string again.
    ``raw``: the door's own dict for this turn, sent on unchanged until a stage changes
    the turn through ``set_text`` / ``replace`` (which drop it). ``extra``: the turn's
    other keys, kept when it is rebuilt."""

    role: str
    parts: list[Part] = field(default_factory=list)
    name: str | None = None
    plain: bool = True
    raw: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The turn's text parts joined (tool results' text included)."""
        return "".join(t for _, t in self.texts())

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def tool_result(self) -> ToolResult | None:
        return next((p for p in self.parts if isinstance(p, ToolResult)), None)

    def texts(self) -> Iterator[tuple[Path, str]]:
        """Every text of the turn with its path (tool call arguments are not text)."""
        for j, p in enumerate(self.parts):
            if isinstance(p, Text):
                yield (j,), p.text
            elif isinstance(p, ToolResult):
                for k, q in enumerate(p.parts):
                    if isinstance(q, Text):
                        yield (j, k), q.text

    def unreadable(self) -> Path | None:
        """The path of the first part no check can read, or None."""
        for j, p in enumerate(self.parts):
            if isinstance(p, Opaque) and p.kind not in NON_TEXT_KINDS:
                return (j,)
            if isinstance(p, ToolResult):
                for k, q in enumerate(p.parts):
                    if isinstance(q, Opaque) and q.kind not in NON_TEXT_KINDS:
                        return (j, k)
        return None

    def set_text(self, path: Path, text: str) -> None:
        parts = self.parts
        for j in path[:-1]:
            tr = parts[j]
            assert isinstance(tr, ToolResult)
            parts = tr.parts
        old = parts[path[-1]]
        assert isinstance(old, Text)
        parts[path[-1]] = Text(text, old.kind, old.raw)
        self.raw = None

    def replace(self, parts: list[Part]) -> None:
        self.parts = parts
        self.raw = None


# ---- tools and formats ---------------------------------------------------------------------


@dataclass(slots=True)
class Tool:
    """A function the model may call; ``raw``: a tool type the gateway does not model."""

    name: str
    parameters: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None  # with mode "tool"


@dataclass(slots=True)
class ResponseFormat:
    kind: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


# ---- the request ---------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """One chat-style inference request, whatever door it came in by.

    ``prompt`` and ``grounding`` are the gateway's ``extra_body`` extensions: the prompts and
    grounding stages consume them (set them to None). ``extras`` holds the door's other
    fields, passed on to an upstream of the same protocol as they came (``n``, ``seed``,
    ``logprobs``, ``max_completion_tokens``...)."""

    model: str
    messages: list[Message]
    stream: bool = False
    include_usage: bool = False  # the client asked for a usage chunk at the end of a stream
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | str | None = None
    user: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    prompt: Any = None
    grounding: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """Everything the request says in text, turn by turn (token estimates)."""
        return "\n".join(t for m in self.messages for _, t in m.texts())

    def last_user_text(self) -> str | None:
        for m in reversed(self.messages):
            if m.role == "user":
                return " ".join(p.text for p in m.parts if isinstance(p, Text) and p.kind == "text").strip() or None
        return None

    def insert_after_system(self, msg: Message) -> None:
        """Put ``msg`` after the leading system/developer turns, before the conversation."""
        at = 0
        while at < len(self.messages) and self.messages[at].role in ("system", "developer"):
            at += 1
        self.messages.insert(at, msg)

    def param(self, name: str) -> Any:
        """A sampling parameter by its Chat name, typed field or pass-through extra."""
        if name in _TYPED:
            return getattr(self, name)
        return self.extras.get(name)

    def set_param(self, name: str, value: Any) -> None:
        if name in _TYPED:
            setattr(self, name, value)
        else:
            self.extras[name] = value


_TYPED = frozenset({"temperature", "top_p", "max_tokens", "stop", "user"})


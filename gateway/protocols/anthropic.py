"""Anthropic Messages <-> the gateway's core request shape, both ways.

The core (stages, routing, records) works on one request shape, the Chat Completions body;
this module is the Messages protocol's adapter onto it:

- the ``/v1/messages`` door: ``request_to_core`` (client body in), ``reply_from_core``
  (whole reply out), ``MessagesStreamEncoder`` (core stream chunks -> Anthropic SSE events);
- the ``anthropic`` upstream provider: ``request_from_core`` (core body -> Messages body),
  ``reply_to_core`` (Messages reply -> core reply), ``MessagesStreamDecoder`` (Anthropic SSE
  events -> core chunks).

Tools (``tool_use`` / ``tool_result`` <-> ``tool_calls`` / ``role: tool``), images, system
prompts, stop sequences, usage and stop reasons are translated; a content block type the
core cannot carry is a 400 naming it, never dropped silently.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.errors import invalid
from gateway.model import (
    END,
    Choice,
    ChoiceDelta,
    Chunk,
    Image,
    Message,
    Part,
    Reply,
    Request,
    Text,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    Usage,
)
from gateway.protocols import chat

# core finish_reason <-> Anthropic stop_reason
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal", "function_call": "tool_use"}
FINISH_REASON = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}
# gateway extensions a client may send on this door too (`extra_body` in the SDK)
DEFAULT_MAX_TOKENS = 1024  # asked of a Messages upstream when the core request names none


def _text_of(content: Any, where: str) -> str:
    """A system prompt or tool result: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, b in enumerate(content):
            if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
                raise invalid(f"'{where}[{i}]' must be a text block here (image results are not supported).", f"{where}[{i}]")
            out.append(b["text"])
        return "\n".join(out)
    if content is None:
        return ""
    raise invalid(f"'{where}' must be a string or a list of text blocks.", where)


def _image_part(block: dict[str, Any], where: str) -> Image:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64" and isinstance(src.get("data"), str):
        return Image(f"data:{src.get('media_type', 'image/png')};base64,{src['data']}")
    if isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
        return Image(src["url"])
    raise invalid(f"'{where}.source' must be a base64 or url image source.", f"{where}.source")


# ---- the door: client Messages request -> core --------------------------------------------

def request_in(body: Any) -> Request:
    """A Messages request body as the neutral request."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required (a string).", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("'max_tokens' is required: an integer >= 1.", "max_tokens")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise invalid("'messages' must be a non-empty array.", "messages")
    out: list[Message] = []
    system = body.get("system")
    if system is not None:
        out.append(Message("system", [Text(_text_of(system, "system"))]))
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise invalid(f"'{where}.role' must be 'user' or 'assistant'.", f"{where}.role")
        out.extend(_message_in(m, where))
    params = {k: body[k] for k in ("temperature", "top_p", "stream") if body.get(k) is not None}
    chat.check_sampling(params)
    req = Request(model=model, messages=out, max_tokens=max_tokens, stream=params.pop("stream", False), **params)
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("'stop_sequences' must be an array of strings.", "stop_sequences")
        req.stop = stops
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        req.user = meta["user_id"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("'tools' must be an array.", "tools")
        req.tools = [_tool_in(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        req.tool_choice = _tool_choice_in(choice)
    req.prompt = body.get("prompt")
    req.grounding = body.get("grounding")
    return req


def _tool_in(t: Any, where: str) -> Tool:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise invalid(f"'{where}' must be a tool with a 'name' and an 'input_schema'.", where)
    if t.get("type") not in (None, "custom"):
        raise invalid(f"'{where}.type' {t.get('type')!r}: only client tools (name, input_schema) are supported.", f"{where}.type")
    return Tool(t["name"], t.get("input_schema") or {"type": "object"}, t.get("description") or None)


def _tool_choice_in(choice: Any) -> ToolChoice:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return ToolChoice("auto")
    if kind == "any":
        return ToolChoice("required")
    if kind == "none":
        return ToolChoice("none")
    if kind == "tool" and isinstance(choice.get("name"), str):
        return ToolChoice("tool", choice["name"])
    raise invalid("'tool_choice' must be {type: auto | any | none} or {type: tool, name}.", "tool_choice")


def _message_in(m: dict[str, Any], where: str) -> list[Message]:
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [Message(role, [Text(content)])]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content blocks.", f"{where}.content")
    parts: list[Part] = []
    calls: list[Part] = []
    out: list[Message] = []  # tool results first: each its own tool turn
    for j, b in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            parts.append(Text(b["text"]))
        elif kind == "image" and role == "user":
            parts.append(_image_part(b, bw))
        elif kind == "tool_use" and role == "assistant":
            calls.append(ToolCall(str(b.get("id", "")), str(b.get("name", "")), orjson.dumps(b.get("input") or {}).decode()))
        elif kind == "tool_result" and role == "user":
            text = _text_of(b.get("content"), f"{bw}.content")
            if b.get("is_error"):
                text = f"[tool error] {text}"
            out.append(Message("tool", [ToolResult(str(b.get("tool_use_id", "")), [Text(text)])]))
        else:
            raise invalid(f"'{bw}.type' {kind!r} is not supported in a {role} message "
                          "(text, image, tool_use from the assistant, tool_result from the user).", f"{bw}.type")
    if role == "assistant":
        text = "".join(p.text for p in parts if isinstance(p, Text))
        out.append(Message("assistant", ([Text(text)] if text else []) + calls))
    elif parts:
        if len(parts) == 1 and isinstance(parts[0], Text):
            out.append(Message("user", parts))
        else:
            out.append(Message("user", parts, plain=False))
    return out


# ---- the door: core reply -> Messages reply -----------------------------------------------

def _usage(usage: Usage | None) -> dict[str, int]:
    u = usage or Usage()
    return {"input_tokens": int(u.prompt_tokens or 0), "output_tokens": int(u.completion_tokens or 0)}


def reply_from_core(reply: Reply, model: str) -> dict[str, Any]:
    """The neutral reply as a Messages reply (its first choice)."""
    choice = reply.choices[0] if reply.choices else None
    content: list[dict[str, Any]] = []
    if choice is not None:
        text = choice.text
        if text:
            content.append({"type": "text", "text": text})
        for call in choice.message.tool_calls:
            try:
                args = orjson.loads(call.arguments or "{}")
            except orjson.JSONDecodeError:
                args = {"_raw": call.arguments}
            content.append({"type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex[:20]}", "name": call.name, "input": args})
    finish = choice.finish_reason if choice is not None else None
    out: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": STOP_REASON.get(finish or "stop", "end_turn"), "stop_sequence": None,
        "usage": _usage(reply.usage),
    }
    if choice is not None and isinstance(choice.filter_results, dict):
        out["gatehouse_content_filter"] = choice.filter_results
    if reply.grounding is not None:
        out["gatehouse_grounding"] = reply.grounding
    return out


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStreamEncoder:
    """Neutral stream chunks -> Anthropic SSE events."""

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self.block: int = -1  # index of the open content block, -1 when none is open
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # core tool_call index -> block index
        self.finish: str | None = None
        self.output_tokens = 0

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        msg: dict[str, Any] = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": self.model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return _event("message_start", {"type": "message_start", "message": msg})

    def _close_block(self) -> bytes:
        if self.block < 0 or self.block_kind is None:
            return b""
        self.block_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.block += 1
        self.block_kind = kind
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block, "content_block": block})

    def chunk(self, chunk: Chunk) -> bytes:
        out = self._start()
        usage = chunk.usage
        if usage is not None:
            self.input_tokens = int(usage.prompt_tokens or self.input_tokens)
            self.output_tokens = int(usage.completion_tokens or 0)
        for c in chunk.choices:
            text = c.text
            if text:
                if self.block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                      "delta": {"type": "text_delta", "text": text}})
            for tc in c.tool_calls or ():
                i = tc.index
                if i not in self.tool_blocks:
                    out += self._open("tool_use", {"type": "tool_use", "id": tc.id or f"toolu_{uuid.uuid4().hex[:20]}",
                                                   "name": tc.name or "", "input": {}})
                    self.tool_blocks[i] = self.block
                if tc.arguments:
                    out += _event("content_block_delta", {"type": "content_block_delta", "index": self.tool_blocks[i],
                                                          "delta": {"type": "input_json_delta", "partial_json": tc.arguments}})
            if c.finish_reason:
                self.finish = c.finish_reason
        return out

    def done(self, output_tokens: int | None = None) -> bytes:
        out = self._start() + self._close_block()
        delta = {"stop_reason": STOP_REASON.get(self.finish or "stop", "end_turn"), "stop_sequence": None}
        n = output_tokens if output_tokens is not None else self.output_tokens
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": n}})
        return out + _event("message_stop", {"type": "message_stop"})

    def blocked(self, message: str, detail: dict[str, Any]) -> bytes:
        """Cut by an output guardrail: stop_reason ``refusal``, then an error event naming the rule."""
        out = self._start() + self._close_block()
        out += _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
                                        "usage": {"output_tokens": self.output_tokens}, "gatehouse_content_filter": detail})
        return out + _event("error", {"type": "error", "error": {"type": "invalid_request_error", "message": message, **detail}})

    def broken(self, message: str) -> bytes:
        return self._start() + _event("error", {"type": "error", "error": {"type": "api_error", "message": message}})


# ---- the provider: core request -> Messages request, and replies back ---------------------

def request_out(req: Request, model: str) -> dict[str, Any]:
    """The neutral request as a Messages request for ``model``."""
    system: list[str] = []
    msgs: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if msgs and msgs[-1]["role"] == role:  # Messages wants alternating turns: merge
            msgs[-1]["content"].extend(blocks)
        else:
            msgs.append({"role": role, "content": blocks})

    for m in req.messages:
        role = m.role
        if role in ("system", "developer"):
            texts = [p.text for p in m.parts if isinstance(p, Text) and (m.plain or p.kind == "text")]
            system.append("".join(texts) if m.plain else " ".join(texts))
        elif role == "tool":
            tr = m.tool_result
            content = "".join(p.text for p in tr.parts if isinstance(p, Text)) if tr is not None and tr.plain else ""
            add("user", [{"type": "tool_result", "tool_use_id": tr.call_id if tr is not None else "", "content": content}])
        elif role in ("user", "assistant"):
            blocks: list[dict[str, Any]] = []
            for p in m.parts:
                if isinstance(p, Text) and (p.kind == "text" if not m.plain else p.text):
                    blocks.append({"type": "text", "text": p.text})
                elif isinstance(p, Image):
                    url = p.url
                    if url.startswith("data:") and ";base64," in url:
                        media, data = url[5:].split(";base64,", 1)
                        blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
                    else:
                        blocks.append({"type": "image", "source": {"type": "url", "url": url}})
            for call in m.tool_calls:
                try:
                    args = orjson.loads(call.arguments or "{}")
                except orjson.JSONDecodeError:
                    args = {}
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
            add(role, blocks or [{"type": "text", "text": ""}])
    out: dict[str, Any] = {"model": model, "messages": msgs,
                           "max_tokens": req.extras.get("max_completion_tokens") or req.max_tokens or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    for k in ("temperature", "top_p"):
        if getattr(req, k) is not None:
            out[k] = getattr(req, k)
    if req.stream:
        out["stream"] = True
    elif req.extras.get("stream") is not None:
        out["stream"] = req.extras["stream"]
    stop = req.stop
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if req.tools:
        out["tools"] = [{"name": t.name, "description": t.description or "", "input_schema": t.parameters or {"type": "object"}}
                        for t in req.tools if t.raw is None or t.raw.get("type") == "function"]
    choice = req.tool_choice
    if choice is not None:
        out["tool_choice"] = {"type": "tool", "name": choice.name or ""} if choice.mode == "tool" else {"type": MESSAGES_CHOICE[choice.mode]}
    if req.user is not None:
        out["metadata"] = {"user_id": req.user}
    return out


MESSAGES_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


def reply_to_core(msg: dict[str, Any], model: str) -> Reply:
    """A Messages reply as the neutral reply."""
    blocks = [b for b in msg.get("content") or () if isinstance(b, dict)]
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls: list[Part] = [ToolCall(b.get("id", ""), b.get("name", ""), orjson.dumps(b.get("input") or {}).decode())
                         for b in blocks if b.get("type") == "tool_use"]
    parts: list[Part] = [Text(text)] if text or not calls else []
    message = Message("assistant", parts + calls, extra={"refusal": None})
    u = msg.get("usage") or {}
    pt, ct = int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
    finish = FINISH_REASON.get(msg.get("stop_reason") or "end_turn", "stop")
    return Reply("chatcmpl-" + str(msg.get("id", uuid.uuid4().hex)), msg.get("model") or model,
                 [Choice(0, message, finish, extra={"logprobs": None})], Usage(pt, ct, pt + ct), int(time.time()),
                 extra={"object": "chat.completion"})


class MessagesStreamDecoder:
    """Anthropic SSE event payloads -> neutral chunks (ending with ``END``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.tool_index: dict[int, int] = {}  # block index -> core tool_call index
        self.input_tokens = 0
        self.output_tokens = 0

    def _chunk(self, role: str | None = None, text: str | None = None, calls: list[ToolCallDelta] | None = None,
               finish: str | None = None) -> Chunk:
        return Chunk(self.id, self.model, [ChoiceDelta(0, role, text, calls, finish, {"logprobs": None})], None, self.created)

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks for one upstream event; raises ``ValueError`` on an upstream error event."""
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        kind = ev.get("type")
        if kind == "message_start":
            m = ev.get("message") or {}
            self.model = m.get("model") or self.model
            self.input_tokens = int((m.get("usage") or {}).get("input_tokens") or 0)
            return [self._chunk("assistant", "")]
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use":
                n = self.tool_index[ev.get("index", 0)] = len(self.tool_index)
                return [self._chunk(calls=[ToolCallDelta(n, block.get("id", ""), block.get("name", ""), "")])]
            return []
        if kind == "content_block_delta":
            d = ev.get("delta") or {}
            if d.get("type") == "text_delta":
                return [self._chunk(text=d.get("text", ""))]
            if d.get("type") == "input_json_delta":
                n = self.tool_index.get(ev.get("index", 0), 0)
                return [self._chunk(calls=[ToolCallDelta(n, None, None, d.get("partial_json", ""))])]
            return []
        if kind == "message_delta":
            self.output_tokens = int((ev.get("usage") or {}).get("output_tokens") or self.output_tokens)
            reason = (ev.get("delta") or {}).get("stop_reason")
            return [self._chunk(finish=FINISH_REASON.get(reason or "end_turn", "stop"))]
        if kind == "message_stop":
            usage = Usage(self.input_tokens, self.output_tokens, self.input_tokens + self.output_tokens)
            return [Chunk(self.id, self.model, [], usage, self.created), END]
        if kind == "error":
            err = ev.get("error") or {}
            raise ValueError(str(err.get("message") or err))
        return []

"""OpenAI Chat Completions <-> the neutral model, both ways.

The ``/v1/chat/completions`` door reads its body with ``request_in`` and writes replies
with ``reply_out`` / ``chunk_out``; the ``openai`` provider sends ``request_out`` upstream
and reads the answer with ``reply_in`` / ``chunk_in``.

Round trips are exact for a validated body: ``request_out(request_in(b)) == b``. Turns no
stage changed go out as the dicts they came in as (``Message.raw``), so the common request
costs a handful of small objects, not a rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.errors import invalid
from gateway.model import (
    Choice,
    ChoiceDelta,
    Chunk,
    Image,
    Message,
    Opaque,
    Part,
    Reply,
    Request,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    Usage,
)

_TYPED_PARAMS = (("temperature", (int, float)), ("top_p", (int, float)), ("max_tokens", (int,)), ("user", (str,)))
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})

# ---- validation of the sampling fields (every door's, named as Chat names them) ------------

def type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(type(v), type(v).__name__)


def expect(body: dict[str, Any], name: str, types: tuple[type, ...], desc: str, required: bool = False) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise invalid(f"Missing required parameter: '{name}'.", name)
        return None
    v = body[name]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise invalid(f"Invalid type for '{name}': expected {desc}, but got {type_name(v)}.", name)
    return v


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = expect(body, name, (int, float), "a number")
    if v is not None and not lo <= v <= hi:
        raise invalid(f"Invalid value for '{name}': {v} is outside [{lo}, {hi}].", name)


def check_sampling(body: dict[str, Any]) -> None:
    expect(body, "stream", (bool,), "a boolean")
    opts = expect(body, "stream_options", (dict,), "an object")
    if opts is not None and "include_usage" in opts and not isinstance(opts["include_usage"], bool):
        raise invalid("Invalid type for 'stream_options.include_usage': expected a boolean.", "stream_options.include_usage")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        v = expect(body, name, (int,), "an integer")
        if v is not None and v < 1:
            raise invalid(f"Invalid value for '{name}': must be >= 1.", name)
    expect(body, "user", (str,), "a string")


# ---- request in ----------------------------------------------------------------------------


def part_in(p: Any) -> Part:
    if isinstance(p, str):
        return Text(p, "")
    if not isinstance(p, dict):
        return Opaque(p)
    kind = p.get("type")
    text = p.get("text")
    if isinstance(text, str):  # any part with a string `text` is text, whatever its type says
        simple = len(p) == 2 and isinstance(kind, str) and kind not in ("", "refusal")
        return Text(text, kind if isinstance(kind, str) else "", None if simple else p)
    if kind == "refusal" and isinstance(p.get("refusal"), str):
        return Text(p["refusal"], "refusal", None if len(p) == 2 else p)
    if kind == "tool_result":
        c = p.get("content")
        if isinstance(c, str):
            return ToolResult(str(p.get("tool_use_id") or ""), [Text(c)], bool(p.get("is_error")), True, p)
        if isinstance(c, list):
            return ToolResult(str(p.get("tool_use_id") or ""), [part_in(q) for q in c], bool(p.get("is_error")), False, p)
    if kind == "image_url":
        img = p.get("image_url")
        if isinstance(img, dict) and isinstance(img.get("url"), str):
            simple = len(p) == 2 and set(img) <= {"url", "detail"}
            return Image(img["url"], img.get("detail"), None if simple else p)
    return Opaque(p)


def message_in(m: dict[str, Any]) -> Message:
    if type(m) is dict and len(m) == 2 and type(m.get("content")) is str and type(role := m.get("role")) is str and role != "tool":
        return Message(role, [Text(m["content"])], None, True, m, None)  # the common turn: role and a string
    if not isinstance(m, dict):  # not a turn at all (validation refuses it; kept for tools that skip it)
        return Message("", [Opaque(m)])
    role = str(m.get("role"))
    content = m.get("content")
    if isinstance(content, str):
        parts: list[Part] = [Text(content)]
        plain = True
    elif isinstance(content, list):
        parts = [part_in(p) for p in content]
        plain = False
    else:
        parts, plain = [], True
    extra = {k: v for k, v in m.items() if k not in _MESSAGE_KEYS} or None
    calls = m.get("tool_calls")
    if calls is not None:
        if isinstance(calls, list) and all(_is_call(c) for c in calls):
            parts.extend(ToolCall(str(c.get("id") or ""), c["function"]["name"], c["function"]["arguments"], c) for c in calls)
        else:
            extra = {**(extra or {}), "tool_calls": calls}
    if role == "tool":
        parts = [ToolResult(str(m.get("tool_call_id") or ""), parts, False, plain)]
    elif "tool_call_id" in m:
        extra = {**(extra or {}), "tool_call_id": m["tool_call_id"]}
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        extra, name = {**(extra or {}), "name": name}, None
    return Message(role, parts, name, plain, m, extra)


def _is_call(c: Any) -> bool:
    fn = c.get("function") if isinstance(c, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)


def _tool_in(t: Any) -> Tool:
    fn = t.get("function") if isinstance(t, dict) else None
    if isinstance(fn, dict) and t.get("type") == "function" and len(t) == 2 and isinstance(fn.get("name"), str) \
            and set(fn) <= {"name", "description", "parameters", "strict"}:
        return Tool(fn["name"], fn.get("parameters"), fn.get("description"), fn.get("strict"))
    if isinstance(fn, dict) and isinstance(t, dict) and t.get("type") == "function":
        name = fn.get("name")
        return Tool(name if isinstance(name, str) else "", fn.get("parameters"), fn.get("description"), fn.get("strict"), raw=t)
    name = t.get("name") if isinstance(t, dict) else None
    return Tool(name if isinstance(name, str) else "", raw=t if isinstance(t, dict) else {"value": t})


def _choice_in(c: Any) -> ToolChoice | None:
    if c in ("auto", "none", "required"):
        return ToolChoice(c)
    if isinstance(c, dict) and len(c) == 2 and c.get("type") == "function":
        fn = c.get("function")
        if isinstance(fn, dict) and len(fn) == 1 and isinstance(fn.get("name"), str):
            return ToolChoice("tool", fn["name"])
    return None


def _format_in(f: Any) -> ResponseFormat | None:
    if f == {"type": "text"} or f == {"type": "json_object"}:
        return ResponseFormat(f["type"])
    if isinstance(f, dict) and len(f) == 2 and f.get("type") == "json_schema":
        js = f.get("json_schema")
        if isinstance(js, dict) and isinstance(js.get("name"), str) and set(js) <= {"name", "schema", "strict"}:
            return ResponseFormat("json_schema", js["name"], js.get("schema"), js.get("strict"))
    return None


def request_in(body: dict[str, Any]) -> Request:
    """A validated Chat Completions body as the neutral request."""
    extras = dict(body)
    model = extras.pop("model", "")
    req = Request(model=model if isinstance(model, str) else str(model), messages=[message_in(m) for m in extras.pop("messages", None) or ()])
    if not extras:
        return req
    if extras.get("stream") is True:
        del extras["stream"]
        req.stream = True
    opts = extras.get("stream_options")
    if opts is not None and isinstance(opts, dict) and opts.get("include_usage") is True:
        req.include_usage = True
    for name, types in _TYPED_PARAMS:
        if name in extras:
            v = extras[name]
            if v is not None and isinstance(v, types) and not isinstance(v, bool):
                setattr(req, name, extras.pop(name))
    if "stop" in extras:
        stop = extras["stop"]
        if isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            req.stop = extras.pop("stop")
    if "tools" in extras and isinstance(extras["tools"], list):
        req.tools = [_tool_in(t) for t in extras.pop("tools")]
    if "tool_choice" in extras and (tc := _choice_in(extras["tool_choice"])) is not None:
        del extras["tool_choice"]
        req.tool_choice = tc
    if "response_format" in extras and (rf := _format_in(extras["response_format"])) is not None:
        del extras["response_format"]
        req.response_format = rf
    if extras.get("prompt") is not None:
        req.prompt = extras.pop("prompt")
    if extras.get("grounding") is not None:
        req.grounding = extras.pop("grounding")
    req.extras = extras
    return req


def content_param(i: int, m: Message, path: tuple[int, ...]) -> str:
    """The Chat name of the text at ``path`` in turn ``i`` (error messages and params)."""
    base = f"messages[{i}].content"
    rest = path[1:] if m.role == "tool" and m.parts and isinstance(m.parts[0], ToolResult) else path
    if m.plain or not rest:
        return base
    return base + f"[{rest[0]}]" + (f".content[{rest[1]}]" if len(rest) > 1 else "")


# ---- request out ---------------------------------------------------------------------------


def part_out(p: Part) -> Any:
    if isinstance(p, Text):
        if p.raw is not None:
            return {**p.raw, "refusal" if p.kind == "refusal" and "text" not in p.raw else "text": p.text}
        if p.kind == "":
            return p.text
        return {"type": "refusal", "refusal": p.text} if p.kind == "refusal" else {"type": p.kind, "text": p.text}
    if isinstance(p, Image):
        if p.raw is not None:
            return p.raw
        img: dict[str, Any] = {"url": p.url}
        if p.detail is not None:
            img["detail"] = p.detail
        return {"type": "image_url", "image_url": img}
    if isinstance(p, ToolResult):
        content = _text(p.parts) if p.plain else [part_out(q) for q in p.parts]
        if p.raw is not None:
            return {**p.raw, "content": content}
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.call_id, "content": content}
        if p.is_error:
            out["is_error"] = True
        return out
    if isinstance(p, ToolCall):  # only inside assistant turns, handled there
        raise TypeError("a tool call is not a content part in Chat Completions")
    return p.data


def _text(parts: Sequence[Part]) -> str:
    return "".join(p.text for p in parts if isinstance(p, Text))


def message_out(m: Message) -> Any:
    if m.raw is not None:
        return m.raw
    if m.role == "" and len(m.parts) == 1 and isinstance(m.parts[0], Opaque):
        return m.parts[0].data
    out: dict[str, Any] = {"role": m.role}
    if m.role == "tool" and (tr := m.tool_result) is not None:
        out["content"] = (_text(tr.parts) if tr.parts else None) if tr.plain else [part_out(q) for q in tr.parts]
        out["tool_call_id"] = tr.call_id
    else:
        body = [p for p in m.parts if not isinstance(p, ToolCall)]
        if m.plain:
            out["content"] = _text(body) if body else None
        else:
            out["content"] = [part_out(p) for p in body]
        calls = m.tool_calls
        if calls:
            out["tool_calls"] = [c.raw if c.raw is not None and c.raw["function"].get("arguments") == c.arguments
                                 else {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    if m.name is not None:
        out["name"] = m.name
    if m.extra:
        out.update(m.extra)
    return out


def _tool_out(t: Tool) -> dict[str, Any]:
    if t.raw is not None:
        return t.raw
    fn: dict[str, Any] = {"name": t.name}
    if t.description is not None:
        fn["description"] = t.description
    if t.parameters is not None:
        fn["parameters"] = t.parameters
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def tool_choice_out(c: ToolChoice) -> Any:
    return {"type": "function", "function": {"name": c.name}} if c.mode == "tool" else c.mode


def format_out(f: ResponseFormat) -> dict[str, Any]:
    if f.kind != "json_schema":
        return {"type": f.kind}
    js: dict[str, Any] = {"name": f.name or "response"}
    if f.schema is not None:
        js["schema"] = f.schema
    if f.strict is not None:
        js["strict"] = f.strict
    return {"type": "json_schema", "json_schema": js}


def request_out(req: Request, model: str | None = None) -> dict[str, Any]:
    """The neutral request as a Chat Completions body (for ``model``: an upstream's name)."""
    body: dict[str, Any] = {"model": req.model if model is None else model, "messages": [message_out(m) for m in req.messages]}
    if req.stream:
        body["stream"] = True
    for name in ("temperature", "top_p", "max_tokens", "stop", "user"):
        v = getattr(req, name)
        if v is not None:
            body[name] = v
    if req.tools is not None:
        body["tools"] = [_tool_out(t) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = tool_choice_out(req.tool_choice)
    if req.response_format is not None:
        body["response_format"] = format_out(req.response_format)
    if req.prompt is not None:
        body["prompt"] = req.prompt
    if req.grounding is not None:
        body["grounding"] = req.grounding
    if req.extras:
        body.update(req.extras)
    if req.include_usage and not (isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage") is True):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


# ---- replies -------------------------------------------------------------------------------

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def usage_in(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(u.get("prompt_tokens"), u.get("completion_tokens"), u.get("total_tokens"),
                 cached if isinstance(cached, int) else None, u)


def usage_out(u: Usage) -> dict[str, Any]:
    out = dict(u.raw) if u.raw is not None else {}
    for k in _USAGE_KEYS:
        v = getattr(u, k)
        if v is not None or k in out:
            out[k] = v
    return out


def reply_in(data: dict[str, Any]) -> Reply:
    """A Chat Completions reply (the ``choices[].message`` shape) as the neutral reply; a legacy
    completions reply's ``choices[].text`` reads as the choice's text (``Reply.kind`` says which)."""
    extra = dict(data)
    choices: list[Choice] = []
    for c in extra.pop("choices", None) or ():
        if not isinstance(c, dict):
            continue
        c = dict(c)
        if "message" not in c and isinstance(c.get("text"), str):
            m = Message("assistant", [Text(c.pop("text"))])
        else:
            msg = c.pop("message", None) or {}
            m = message_in({"role": "assistant", **msg}) if isinstance(msg, dict) else Message("assistant", extra={"_message": msg})
        choices.append(Choice(c.pop("index", len(choices)), m, c.pop("finish_reason", None), c.pop("content_filter_results", None), c or None))
    return Reply(extra.pop("id", ""), extra.pop("model", ""), choices, usage_in(extra.pop("usage", None)),
                 extra.pop("created", 0), extra.pop("gatehouse_grounding", None), extra)


def reply_out(r: Reply, kind: str | None = None) -> dict[str, Any]:
    """The reply as Chat Completions JSON, or as a legacy completions reply (``choices[].text``)
    when ``kind`` (default: ``Reply.kind``) is ``text_completion``."""
    out: dict[str, Any] = {"id": r.id, **({"object": "chat.completion"} if "object" not in r.extra else {}), "created": r.created,
                           "model": r.model}
    out.update(r.extra)
    text_kind = (kind or r.kind) == "text_completion"
    choices = []
    for c in r.choices:
        choice: dict[str, Any] = {"index": c.index, "text": c.text} if text_kind else {"index": c.index, "message": message_out(c.message)}
        if c.extra:
            choice.update(c.extra)
        choice["finish_reason"] = c.finish_reason
        if c.filter_results is not None:
            choice["content_filter_results"] = c.filter_results
        choices.append(choice)
    out["choices"] = choices
    if r.usage is not None:
        out["usage"] = usage_out(r.usage)
    if r.grounding is not None:
        out["gatehouse_grounding"] = r.grounding
    return out


# ---- stream chunks -------------------------------------------------------------------------

_CHOICE_KEYS = frozenset({"index", "delta", "finish_reason", "text"})


def _calls_in(calls: list[Any]) -> list[ToolCallDelta]:
    out = []
    for tc in calls:
        if not isinstance(tc, dict):
            out.append(ToolCallDelta(0))
            continue
        fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else {}
        args = fn.get("arguments")
        out.append(ToolCallDelta(tc.get("index", 0), tc.get("id"), fn.get("name"), args if isinstance(args, str) else ""))
    return out


def chunk_in(data: dict[str, Any], raw: bytes | None = None) -> Chunk:
    """A Chat chunk (or a legacy completions chunk: ``choices[].text``) as the neutral chunk;
    ``raw``: the event's own bytes, relayed by the Chat door while no stage changes the chunk."""
    choices = []
    for c in data.get("choices") or ():
        if type(c) is not dict:
            continue
        extra = None
        if not c.keys() <= _CHOICE_KEYS:
            extra = {k: v for k, v in c.items() if k not in _CHOICE_KEYS}
        d = c.get("delta")
        if type(d) is dict:
            text = d.get("content")
            calls = d.get("tool_calls")
            choices.append(ChoiceDelta(c.get("index", 0), d.get("role"), text if type(text) is str else None,
                                       _calls_in(calls) if type(calls) is list else None, c.get("finish_reason"), extra))
        else:
            text = c.get("text")
            choices.append(ChoiceDelta(c.get("index", 0), None, text if type(text) is str else None, None, c.get("finish_reason"), extra))
    u = data.get("usage")
    cid, model = data.get("id"), data.get("model")
    return Chunk(cid if type(cid) is str else str(cid or ""), model if type(model) is str else str(model or ""), choices,
                 usage_in(u) if u else None, data.get("created") or 0, raw)


def chunk_out(ch: Chunk, kind: str = "chat.completion.chunk") -> dict[str, Any]:
    """The chunk as Chat JSON (``kind="text_completion"``: a legacy completions chunk)."""
    text_kind = kind == "text_completion"
    choices = []
    for c in ch.choices:
        if text_kind:
            choices.append({"index": c.index, "text": c.text or "", **(c.extra or {}), "finish_reason": c.finish_reason})
            continue
        d: dict[str, Any] = {}
        if c.role is not None:
            d["role"] = c.role
        if c.text is not None:
            d["content"] = c.text
        if c.tool_calls is not None:
            calls = []
            for tc in c.tool_calls:
                item: dict[str, Any] = {"index": tc.index}
                if tc.id is not None:
                    item["id"] = tc.id
                    item["type"] = "function"
                fn: dict[str, Any] = {}
                if tc.name is not None:
                    fn["name"] = tc.name
                fn["arguments"] = tc.arguments
                item["function"] = fn
                calls.append(item)
            d["tool_calls"] = calls
        choice: dict[str, Any] = {"index": c.index, "delta": d, **(c.extra or {}), "finish_reason": c.finish_reason}
        choices.append(choice)
    out: dict[str, Any] = {"id": ch.id, "object": kind, "created": ch.created, "model": ch.model, "choices": choices}
    if ch.usage is not None:
        out["usage"] = usage_out(ch.usage)
    return out


def chunk_bytes(ch: Chunk, kind: str = "chat.completion.chunk") -> bytes:
    """The chunk's SSE ``data:`` payload: the upstream's own bytes when nothing changed it."""
    return ch.raw if ch.raw is not None else orjson.dumps(chunk_out(ch, kind))

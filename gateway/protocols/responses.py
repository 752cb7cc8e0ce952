"""OpenAI Responses API <-> the neutral model (the ``/v1/responses`` door).

``request_in``: ``input`` (a string or items: messages with ``input_text`` /
``input_image`` / ``output_text`` parts, ``function_call``, ``function_call_output``),
``instructions``, function ``tools`` and ``tool_choice``, ``text.format``,
``max_output_tokens`` and sampling parameters become the neutral request; an item or tool type
the core cannot carry is a 400 naming it. ``response_from_core`` renders a whole reply as
a Response object and ``ResponsesStreamEncoder`` renders core stream chunks as the typed
SSE events (``response.created``, ``response.output_text.delta``, ``response.completed``, ...).
``output_items_to_core`` turns a stored response's output back into core messages, so
``previous_response_id`` continues a stored conversation.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.errors import invalid
from gateway.model import (
    Chunk,
    Message,
    Reply,
    Request,
    ResponseFormat,
    Text,
    Tool,
    ToolChoice,
    Usage,
)
from gateway.protocols import chat

STATUS = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _content_to_core(content: Any, role: str, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or an array of content parts.", where)
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        pw = f"{where}[{j}]"
        if kind in ("input_text", "output_text") and isinstance(p.get("text"), str):
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image" and role == "user" and isinstance(p.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"], **({"detail": p["detail"]} if p.get("detail") else {})}})
        else:
            raise invalid(f"'{pw}.type' {kind!r} is not supported (input_text, input_image, output_text).", f"{pw}.type")
    if role != "user" or all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if role != "user" or len(parts) == 1 else parts
    return parts


def items_to_core(items: Any, where: str = "input") -> list[dict[str, Any]]:
    """Input items (or a stored response's output items) as core messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid(f"'{where}' must be a string or an array of items.", where)
    out: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        iw = f"{where}[{i}]"
        if not isinstance(it, dict):
            raise invalid(f"'{iw}' must be an object.", iw)
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid(f"'{iw}.role' must be user, assistant, system or developer.", f"{iw}.role")
            out.append({"role": "system" if role == "developer" else role, "content": _content_to_core(it.get("content"), role, f"{iw}.content")})
        elif kind == "function_call":
            call = {"id": str(it.get("call_id", "")), "type": "function",
                    "function": {"name": str(it.get("name", "")), "arguments": str(it.get("arguments", ""))}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            elif out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = it.get("output")
            out.append({"role": "tool", "tool_call_id": str(it.get("call_id", "")),
                        "content": output if isinstance(output, str) else orjson.dumps(output).decode()})
        else:
            raise invalid(f"'{iw}.type' {kind!r} is not supported (message, function_call, function_call_output).", f"{iw}.type")
    return out


def _tools_in(tools: Any) -> list[Tool]:
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array.", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
            raise invalid(f"'tools[{i}]' must be a function tool {{type: function, name, parameters}}; built-in tools are not served.", f"tools[{i}]")
        out.append(Tool(t["name"], t.get("parameters") or {"type": "object"}, t.get("description") or None, t.get("strict")))
    return out


def _format_in(fmt: Any) -> ResponseFormat | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        return ResponseFormat("json_schema", fmt.get("name", "response"), fmt["schema"], fmt.get("strict"))
    raise invalid("'text.format' must be {type: text | json_object} or {type: json_schema, name, schema}.", "text.format")


def request_in(body: Any, history: list[dict[str, Any]] | None = None) -> tuple[Request, list[dict[str, Any]]]:
    """A Responses request as the neutral request, and its input items as conversation turns
    (what a stored response keeps); ``history``: the turns of ``previous_response_id``."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required (a string).", "model")
    if "input" not in body:
        raise invalid("'input' is required: a string or an array of items.", "input")
    msgs = items_to_core(body["input"])
    if not msgs:
        raise invalid("'input' must not be empty.", "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("'instructions' must be a string.", "instructions")
    head = [Message("system", [Text(instructions)])] if instructions else []
    req = Request(model=model, messages=[*head, *(chat.message_in(m) for m in (*(history or ()), *msgs))])
    mot = body.get("max_output_tokens")
    if mot is not None:
        if isinstance(mot, bool) or not isinstance(mot, int) or mot < 1:
            raise invalid("'max_output_tokens' must be an integer >= 1.", "max_output_tokens")
        req.max_tokens = mot
    params = {k: body[k] for k in ("temperature", "top_p", "stream", "user") if body.get(k) is not None}
    chat.check_sampling(params)
    req.stream = params.pop("stream", False)
    for k, v in params.items():
        setattr(req, k, v)
    if body.get("parallel_tool_calls") is not None:
        req.extras["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("tools"):
        req.tools = _tools_in(body["tools"])
    choice = body.get("tool_choice")
    if choice is not None:
        if choice in ("auto", "none", "required"):
            req.tool_choice = ToolChoice(choice)
        elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
            req.tool_choice = ToolChoice("tool", choice["name"])
        else:
            raise invalid("'tool_choice' must be auto, none, required or {type: function, name}.", "tool_choice")
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise invalid("'text' must be an object {format}.", "text")
        req.response_format = _format_in(text.get("format"))
    req.prompt = body.get("prompt")
    req.grounding = body.get("grounding")
    return req, msgs


# ---- core reply -> Response -----------------------------------------------------------------

def _usage(u: Any) -> dict[str, Any]:
    if isinstance(u, Usage):
        pt, ct = int(u.prompt_tokens or 0), int(u.completion_tokens or 0)
    else:
        u = u if isinstance(u, dict) else {}
        pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"input_tokens": pt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": ct,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": pt + ct}


def shell(rid: str, body: dict[str, Any], model: str, status: str, output: list[dict[str, Any]], usage: Any = None,
          finish: str | None = None) -> dict[str, Any]:
    """A Response object around ``output`` (echoing the request's settings, as the API does)."""
    incomplete = STATUS.get(finish or "")
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": incomplete[0] if incomplete and status == "completed" else status,
        "error": None, "incomplete_details": {"reason": incomplete[1]} if incomplete and status == "completed" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"), "model": model,
        "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": bool(body.get("store", False)), "temperature": body.get("temperature", 1.0),
        "text": text, "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0),
        "truncation": "disabled", "usage": _usage(usage) if usage is not None else None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def output_from_core(reply: Reply) -> list[dict[str, Any]]:
    """The reply's first choice as Response output items (a message, then function calls)."""
    out: list[dict[str, Any]] = []
    if not reply.choices:
        return out
    choice = reply.choices[0]
    text = choice.text
    if text:
        out.append({"type": "message", "id": new_id("msg"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]})
    for call in choice.message.tool_calls:
        out.append({"type": "function_call", "id": new_id("fc"), "call_id": call.id or new_id("call"),
                    "name": call.name, "arguments": call.arguments or "", "status": "completed"})
    return out


def output_to_core(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored response's output as core messages (assistant text and tool calls)."""
    items = []
    for it in output:
        if it.get("type") == "message":
            items.append({"type": "message", "role": "assistant", "content": it.get("content") or []})
        elif it.get("type") == "function_call":
            items.append({k: it.get(k) for k in ("type", "call_id", "name", "arguments")})
    return items_to_core(items, "previous_response_id")


def response_from_core(rid: str, body: dict[str, Any], reply: Reply, model: str) -> dict[str, Any]:
    choice = reply.choices[0] if reply.choices else None
    finish = choice.finish_reason if choice is not None else None
    out = shell(rid, body, model, "completed", output_from_core(reply), reply.usage or {}, finish)
    if choice is not None and isinstance(choice.filter_results, dict):
        out["gatehouse_content_filter"] = choice.filter_results
    if reply.grounding is not None:
        out["gatehouse_grounding"] = reply.grounding
    return out


class ResponsesStreamEncoder:
    """Neutral stream chunks -> the Responses API's typed SSE events."""

    def __init__(self, rid: str, body: dict[str, Any], model: str) -> None:
        self.rid, self.body, self.model = rid, body, model
        self.seq = 0
        self.started = False
        self.output: list[dict[str, Any]] = []
        self.text_item: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # core tool_call index -> function_call item
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None  # the completed Response, once done

    def _ev(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, **data, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        resp = shell(self.rid, self.body, self.model, "in_progress", [])
        return self._ev("response.created", {"response": resp}) + self._ev("response.in_progress", {"response": resp})

    def _close_text(self) -> bytes:
        item = self.text_item
        if item is None:
            return b""
        self.text_item = None
        idx = self.output.index(item)
        part = item["content"][0]
        item["status"] = "completed"
        return (self._ev("response.output_text.done", {"item_id": item["id"], "output_index": idx, "content_index": 0, "text": part["text"]})
                + self._ev("response.content_part.done", {"item_id": item["id"], "output_index": idx, "content_index": 0, "part": part})
                + self._ev("response.output_item.done", {"output_index": idx, "item": item}))

    def chunk(self, chunk: Chunk) -> bytes:
        out = self._start()
        if chunk.usage is not None:
            self.usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
        for c in chunk.choices:
            text = c.text
            if text:
                if self.text_item is None:
                    self.text_item = {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant",
                                      "content": [{"type": "output_text", "text": "", "annotations": []}]}
                    self.output.append(self.text_item)
                    idx = len(self.output) - 1
                    out += self._ev("response.output_item.added", {"output_index": idx, "item": {**self.text_item, "content": []}})
                    out += self._ev("response.content_part.added", {"item_id": self.text_item["id"], "output_index": idx, "content_index": 0,
                                                                    "part": {"type": "output_text", "text": "", "annotations": []}})
                self.text_item["content"][0]["text"] += text
                out += self._ev("response.output_text.delta", {"item_id": self.text_item["id"], "output_index": self.output.index(self.text_item),
                                                               "content_index": 0, "delta": text})
            for tc in c.tool_calls or ():
                i = tc.index
                item = self.calls.get(i)
                if item is None:
                    out += self._close_text()
                    item = self.calls[i] = {"type": "function_call", "id": new_id("fc"), "call_id": tc.id or new_id("call"),
                                            "name": tc.name or "", "arguments": "", "status": "in_progress"}
                    self.output.append(item)
                    out += self._ev("response.output_item.added", {"output_index": len(self.output) - 1, "item": dict(item)})
                if tc.arguments:
                    item["arguments"] += tc.arguments
                    out += self._ev("response.function_call_arguments.delta", {"item_id": item["id"], "output_index": self.output.index(item),
                                                                               "delta": tc.arguments})
            if c.finish_reason:
                self.finish = c.finish_reason
        return out

    def _close_all(self) -> bytes:
        out = self._start() + self._close_text()
        for item in self.calls.values():
            if item["status"] != "completed":
                item["status"] = "completed"
                idx = self.output.index(item)
                out += self._ev("response.function_call_arguments.done", {"item_id": item["id"], "output_index": idx, "arguments": item["arguments"]})
                out += self._ev("response.output_item.done", {"output_index": idx, "item": item})
        return out

    def done(self, output_tokens: int | None = None) -> bytes:
        out = self._close_all()
        usage = dict(self.usage)
        if output_tokens is not None:
            usage["completion_tokens"] = output_tokens
        self.final = shell(self.rid, self.body, self.model, "completed", self.output, usage, self.finish)
        kind = "response.completed" if self.final["status"] == "completed" else "response.incomplete"
        return out + self._ev(kind, {"response": self.final})

    def blocked(self, message: str, detail: dict[str, Any]) -> bytes:
        out = self._close_all()
        resp = shell(self.rid, self.body, self.model, "completed", self.output, self.usage, "content_filter")
        resp["gatehouse_content_filter"] = detail
        out += self._ev("response.incomplete", {"response": resp})
        return out + self._ev("error", {"code": detail.get("code", "content_policy_violation"), "message": message, "param": None, **detail})

    def broken(self, message: str) -> bytes:
        resp = shell(self.rid, self.body, self.model, "failed", self.output)
        resp["error"] = {"code": "server_error", "message": message}
        return self._start() + self._ev("response.failed", {"response": resp})

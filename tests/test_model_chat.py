"""The neutral model's Chat Completions adapter: exact round trips, and the typed view stages read."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import validate
from gateway.model import Image, Message, Opaque, Text, ToolCall, ToolResult
from gateway.protocols import chat

texts = st.text(max_size=12)
ids = st.text("abcdef0123456789_", min_size=1, max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), texts)

text_part = st.builds(lambda t, k: {"type": k, "text": t}, texts, st.sampled_from(["text", "input_text", "output_text"]))
odd_text_part = st.fixed_dictionaries({"type": st.just("text"), "text": texts, "cache_control": st.just({"type": "ephemeral"})})
image_part = st.builds(lambda u, d: {"type": "image_url", "image_url": {"url": u, **({"detail": d} if d else {})}},
                       st.sampled_from(["https://x/a.png", "data:image/png;base64,AAAA"]), st.sampled_from([None, "low", "high"]))
unknown_part = st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "file", "weird"]), "data": texts})
refusal_part = st.builds(lambda t: {"type": "refusal", "refusal": t}, texts)
tool_result_part = st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c}, ids,
                             st.one_of(texts, st.lists(text_part, max_size=2)))
parts = st.lists(st.one_of(text_part, odd_text_part, image_part, unknown_part, refusal_part, tool_result_part, texts), max_size=4)
content = st.one_of(texts, parts, st.none())
call = st.builds(lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}}, ids, ids,
                 st.sampled_from(["{}", '{"q": "x"}', '{"q']))


@st.composite
def message(draw: Any) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    m: dict[str, Any] = {"role": role, "content": draw(content)}
    if role == "assistant" and draw(st.booleans()):
        m["tool_calls"] = draw(st.lists(call, min_size=1, max_size=2))
    if role == "tool":
        m["tool_call_id"] = draw(ids)
    if draw(st.booleans()):
        m["name"] = draw(ids)
    return m


tool = st.builds(lambda n, d: {"type": "function", "function": {"name": n, **({"description": d} if d else {}),
                                                                "parameters": {"type": "object"}}}, ids, st.one_of(st.none(), texts))


@st.composite
def chat_body(draw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(ids), "messages": draw(st.lists(message(), min_size=1, max_size=4))}
    optional = {
        "stream": st.booleans(), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 100),
        "max_completion_tokens": st.integers(1, 100), "n": st.integers(1, 3), "user": ids, "seed": st.integers(0, 9),
        "stop": st.one_of(texts, st.lists(texts, max_size=2)),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "tools": st.lists(tool, max_size=2),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), st.builds(lambda n: {"type": "function", "function": {"name": n}}, ids)),
        "response_format": st.one_of(st.just({"type": "json_object"}), st.just({"type": "text"}),
                                     st.builds(lambda n: {"type": "json_schema", "json_schema": {"name": n, "schema": {"type": "object"}, "strict": True}}, ids)),
        "prompt": st.fixed_dictionaries({"id": ids}), "grounding": st.one_of(st.just(True), st.fixed_dictionaries({"index": ids})),
        "logprobs": st.booleans(), "metadata": st.dictionaries(ids, texts, max_size=2),
    }
    for k, strat in optional.items():
        if draw(st.booleans()):
            body[k] = draw(strat)
    return body


def rebuilt(body: dict[str, Any]) -> dict[str, Any]:
    """Round trip with every turn rebuilt from its typed parts (as after a stage changed it)."""
    req = chat.request_in(body)
    for m in req.messages:
        m.raw = None
    return chat.request_out(req)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chat_body())
def test_request_round_trip_is_exact(body: dict[str, Any]) -> None:
    validate("chat", body)
    assert chat.request_out(chat.request_in(body)) == body
    assert rebuilt(body) == body, "a turn rebuilt from the model must say what the client sent"


def test_typed_view() -> None:
    body = {"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ], "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 5}
    req = chat.request_in(body)
    assert req.stream and req.include_usage and req.max_tokens == 5
    sys_, user, asst, tool_ = req.messages
    assert sys_.parts == [Text("be brief")] and sys_.plain
    assert user.parts == [Text("look"), Image("https://x/a.png")] and not user.plain
    assert asst.tool_calls == [ToolCall("c1", "f", "{}", body["messages"][2]["tool_calls"][0])]
    assert tool_.parts == [ToolResult("c1", [Text("42")])]
    assert [t for _, t in tool_.texts()] == ["42"] and req.last_user_text() == "look"
    tool_.set_text((0, 0), "[redacted]")
    assert tool_.raw is None and chat.request_out(req)["messages"][3] == {"role": "tool", "content": "[redacted]", "tool_call_id": "c1"}


def test_unreadable_parts_are_named() -> None:
    m = chat.message_in({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio", "x": 1}, {"type": "weird"}]})
    assert isinstance(m.parts[2], Opaque) and m.unreadable() == (2,)
    assert Message("user", [Text("a")]).unreadable() is None


reply_text = st.one_of(st.none(), texts)


@st.composite
def chat_reply(draw: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": draw(reply_text)}
    if draw(st.booleans()):
        msg["tool_calls"] = draw(st.lists(call, min_size=1, max_size=2))
    if draw(st.booleans()):
        msg["refusal"] = None
    choice: dict[str, Any] = {"index": 0, "message": msg, "logprobs": None, "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"]))}
    out: dict[str, Any] = {"id": draw(ids), "object": "chat.completion", "created": 1, "model": draw(ids), "choices": [choice]}
    if draw(st.booleans()):
        out["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if draw(st.booleans()):
        out["system_fingerprint"] = "fp"
    return out


@given(chat_reply())
def test_reply_round_trip_is_exact(reply: dict[str, Any]) -> None:
    assert chat.reply_out(chat.reply_in(reply)) == reply


@st.composite
def chat_chunk(draw: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if draw(st.booleans()):
        delta["role"] = "assistant"
    if draw(st.booleans()):
        delta["content"] = draw(texts)
    if draw(st.booleans()):
        delta["tool_calls"] = [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": draw(texts)}}]
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": draw(st.sampled_from([None, "stop", "tool_calls"]))}
    out: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    if draw(st.booleans()):
        out["usage"] = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    return out


@given(chat_chunk())
def test_chunk_round_trip_is_exact(c: dict[str, Any]) -> None:
    assert chat.chunk_out(chat.chunk_in(c)) == c

"""Every door hands the stages the same neutral request for equivalent inputs.

A recording stage sits in a real gateway (mock provider, on loopback); the three doors are
driven over HTTP with the same conversation in their own shapes, and the requests the stage
saw are compared in their canonical serialisation. Plus adapter round trips for the Messages
and Responses doors (body -> neutral -> Chat -> neutral).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols import anthropic, chat, responses
from gateway.types import BaseStage, RequestContext
from tests.support import API_KEY, gateway, make_settings

HEADERS = {"authorization": f"Bearer {API_KEY}"}


class Recorder(BaseStage):
    name = "recorder"
    runs_on_short_circuit = True

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def on_request(self, ctx: RequestContext) -> None:
        assert ctx.request is not None, "a chat request of any door reaches the stages as the neutral model"
        self.seen.append(chat.request_out(ctx.request))


@pytest.fixture
def served() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    s = make_settings([{"name": "m", "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}])
    with gateway(s) as (url, app):
        app.runtime.stages.append(rec)
        yield url, rec


TURNS = {  # the same conversation, as each door says it
    "chat": ("/v1/chat/completions", {"model": "m", "max_tokens": 20, "temperature": 0.5, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 6 x 7?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"q\":\"6*7\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "calc", "description": "math", "parameters": {"type": "object"}}}]}),
    "messages": ("/v1/messages", {"model": "m", "max_tokens": 20, "temperature": 0.5, "system": "be brief", "messages": [
        {"role": "user", "content": "what is 6 x 7?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "calc", "input": {"q": "6*7"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "42"}]}],
        "tools": [{"name": "calc", "description": "math", "input_schema": {"type": "object"}}]}),
    "responses": ("/v1/responses", {"model": "m", "max_output_tokens": 20, "temperature": 0.5, "instructions": "be brief", "input": [
        {"role": "user", "content": "what is 6 x 7?"},
        {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": "{\"q\":\"6*7\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}],
        "tools": [{"type": "function", "name": "calc", "description": "math", "parameters": {"type": "object"}}]}),
}


def _canonical(sent: dict[str, Any]) -> dict[str, Any]:
    # a door's own pass-through fields are not part of the conversation
    return {k: v for k, v in sent.items() if k not in ("parallel_tool_calls",)}


@pytest.mark.parametrize("door", ["messages", "responses"])
def test_stages_see_the_same_request_on_every_door(served: tuple[str, Recorder], door: str) -> None:
    url, rec = served
    with httpx.Client(timeout=30) as c:
        for name in ("chat", door):
            path, body = TURNS[name]
            r = c.post(url + path, json=body, headers=HEADERS)
            assert r.status_code == 200, r.text
    assert len(rec.seen) == 2
    assert _canonical(rec.seen[1]) == _canonical(rec.seen[0])


def test_stages_see_the_chat_request_as_sent(served: tuple[str, Recorder]) -> None:
    url, rec = served
    path, body = TURNS["chat"]
    with httpx.Client(timeout=30) as c:
        assert c.post(url + path, json=body, headers=HEADERS).status_code == 200
    assert rec.seen == [body]


texts = st.text(min_size=1, max_size=10)


@settings(max_examples=100)
@given(system=st.one_of(st.none(), texts), turns=st.lists(texts, min_size=1, max_size=4), max_tokens=st.integers(1, 50),
       stream=st.booleans(), stop=st.lists(texts, max_size=2))
def test_messages_adapter_round_trip(system: str | None, turns: list[str], max_tokens: int, stream: bool, stop: list[str]) -> None:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    body: dict[str, Any] = {"model": "m", "max_tokens": max_tokens, "messages": msgs, "stream": stream}
    if system is not None:
        body["system"] = system
    if stop:
        body["stop_sequences"] = stop
    req = anthropic.request_in(body)
    again = chat.request_in(chat.request_out(req))
    assert chat.request_out(again) == chat.request_out(req)
    # and back out to a Messages upstream: the same conversation
    out = anthropic.request_out(req, "m")
    assert [m["content"][0]["text"] for m in out["messages"]] == turns
    assert out.get("system") == (system or None) and out["max_tokens"] == max_tokens and out.get("stream", False) == stream


@settings(max_examples=100)
@given(instructions=st.one_of(st.none(), texts), text=texts, mot=st.one_of(st.none(), st.integers(1, 50)))
def test_responses_adapter_round_trip(instructions: str | None, text: str, mot: int | None) -> None:
    body: dict[str, Any] = {"model": "m", "input": text}
    if instructions is not None:
        body["instructions"] = instructions
    if mot is not None:
        body["max_output_tokens"] = mot
    req, turns = responses.request_in(body)
    assert turns == [{"role": "user", "content": text}]
    assert chat.request_out(chat.request_in(chat.request_out(req))) == chat.request_out(req)
    sent = chat.request_out(req)
    assert sent["messages"][-1] == {"role": "user", "content": text} and sent.get("max_tokens") == mot
    assert (sent["messages"][0] == {"role": "system", "content": instructions}) == bool(instructions)

"""Hardening (#17): every text-bearing content part on the chat door is checked.

Finding covered: ``[{"type": "input_text", "text": "mail me at bob.private@example.com"}]``
reached the model unredacted (the same text as a string was redacted); so did parts
typed ``"Text"`` or with no type. A part the gateway cannot read is a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.guardrails import GuardrailStage
from gateway.protocols.chat import reply_in, reply_out
from gateway.types import Caller, RequestContext, TrafficRecord
from policies import Engine, PolicySet
from tests.support import API_KEY, FakeUpstream, gateway, make_settings, target

POLICY = """\
id: parts
version: 1
owner: tests
rules:
  - id: redact-pii
    action: redact
    checks: [{type: pii}]
  - id: block-secret
    checks: [{type: regex, deny: ['opensesame']}]
"""
MAIL = "mail me at bob.private@example.com"


@pytest.fixture
def gw(fake_upstream: tuple[str, FakeUpstream], tmp_path: Path) -> Iterator[tuple[httpx.Client, FakeUpstream]]:
    url, up = fake_upstream
    (tmp_path / "p.yaml").write_text(POLICY)
    settings = make_settings([{"name": "m", "targets": [target(url, "echo")]}], policies={"paths": [str(tmp_path / "p.yaml")]})
    with gateway(settings) as (base, _), httpx.Client(base_url=base, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
        yield c, up


def send(c: httpx.Client, content: Any, role: str = "user") -> httpx.Response:
    return c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": role, "content": content}]})


@pytest.mark.parametrize("part", [
    {"type": "text", "text": MAIL},
    {"type": "input_text", "text": MAIL},
    {"type": "output_text", "text": MAIL},
    {"type": "Text", "text": MAIL},
    {"text": MAIL},
    {"type": "some_future_type", "text": MAIL},
    {"type": "tool_result", "tool_use_id": "t1", "content": MAIL},
    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": MAIL}]},
])
def test_every_text_part_is_redacted_before_the_model(gw: tuple[httpx.Client, FakeUpstream], part: dict[str, Any]) -> None:
    c, up = gw
    r = send(c, [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, part])
    assert r.status_code == 200, r.text
    sent = str(up.requests[-1]["messages"])
    assert "bob.private@example.com" not in sent and "[EMAIL]" in sent


@pytest.mark.parametrize("part", [{"type": "input_text", "text": "say opensesame"}, {"text": "opensesame"}])
def test_every_text_part_can_be_blocked(gw: tuple[httpx.Client, FakeUpstream], part: dict[str, Any]) -> None:
    c, up = gw
    n = len(up.requests)
    r = send(c, [part])
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"
    assert len(up.requests) == n


@pytest.mark.parametrize("part", [
    {"type": "video", "url": "https://example.com/v.mp4"},
    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "hologram", "data": "..."}]},
])
def test_a_part_the_gateway_cannot_read_is_a_400_naming_it(gw: tuple[httpx.Client, FakeUpstream], part: dict[str, Any]) -> None:
    c, up = gw
    n = len(up.requests)
    r = send(c, [{"type": "text", "text": "hi"}, part])
    assert r.status_code == 400
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    kind = part["type"] if part["type"] != "tool_result" else "hologram"
    assert repr(kind) in err["message"] and err["param"].startswith("messages[0].content[1]")
    assert len(up.requests) == n  # never forwarded unchecked


async def test_reply_content_parts_go_through_output_checks() -> None:
    stage = GuardrailStage(Engine(PolicySet.from_texts([("p.yaml", POLICY)])))
    rec = TrafficRecord(request_id="r", ts_start=0.0, endpoint="chat")
    ctx = RequestContext("r", "chat", Caller("acme", "k"), {"model": "m", "messages": []}, {}, rec)
    reply = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [
        {"type": "output_text", "text": MAIL}]}}]}
    out = reply_out(await stage.on_response(ctx, reply_in(reply)))
    assert out["choices"][0]["message"]["content"][0]["text"] == "mail me at [EMAIL]"
    reply = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [
        {"type": "output_text", "text": "the password is opensesame"}]}}]}
    out = reply_out(await stage.on_response(ctx, reply_in(reply)))
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert "opensesame" not in str(out["choices"][0]["message"])

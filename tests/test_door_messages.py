"""The Anthropic Messages door (POST /v1/messages) and the `anthropic` upstream provider.

The official `anthropic` SDK against a real gateway on loopback: the demo gateway (mock
provider, demo policy with the recitation index) for governance, and real fake upstreams
of both protocols (OpenAI-compatible and Anthropic Messages) for translation both ways,
streaming and not, with a tool-use round trip.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anthropic
import openai
import pytest

from gateway.cli.serve import resolve_config
from tests.support import API_KEY, anthropic_target, gateway, make_settings, target
from tests.test_recitation_demo import ESSAY, PREAMBLE, sentences

DEMO_KEY = "sk-gatehouse-demo"
TOOL = {"name": "lookup", "description": "look a word up", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}


@pytest.fixture
def demo_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # the demo builds its recitation index and writes its log under here
    for name in ("GATEHOUSE_DEMO_RECITATION", "GATEHOUSE_DEMO_POLICIES"):
        monkeypatch.setenv(name, "-")
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEHOUSE_DEMO_KEY", DEMO_KEY)
    settings, _ = resolve_config(None, demo=True)
    return settings


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def test_demo_gateway_serves_and_governs_the_messages_door(demo_settings, tmp_path: Path) -> None:
    with gateway(demo_settings) as (url, _app):
        client = anthropic.Anthropic(base_url=url, api_key=DEMO_KEY, max_retries=0)
        msg = client.messages.create(model="demo", max_tokens=64, system="be brief",
                                     messages=[{"role": "user", "content": "hello messages door"}])
        assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
        assert msg.content[0].type == "text" and msg.content[0].text == "hello messages door"
        assert msg.usage.output_tokens == 3

        with client.messages.stream(model="demo", max_tokens=64, messages=[{"role": "user", "content": "one two three four"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text == "one two three four" and final.stop_reason == "end_turn" and final.usage.output_tokens == 4

        # bearer auth works too; a bad key is an Anthropic-shaped 401
        bearer = anthropic.Anthropic(base_url=url, auth_token=DEMO_KEY, max_retries=0)
        assert bearer.messages.create(model="demo", max_tokens=8, messages=[{"role": "user", "content": "hi"}]).content[0].text == "hi"
        with pytest.raises(anthropic.AuthenticationError) as auth:
            anthropic.Anthropic(base_url=url, api_key="sk-wrong-key-1234", max_retries=0).messages.create(
                model="demo", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert auth.value.body["type"] == "error" and auth.value.body["error"]["type"] == "authentication_error"

        # a toxic input is blocked, in Anthropic's error shape, from the same error table
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(model="demo", max_tokens=16, messages=[{"role": "user", "content": "You are a worthless idiot and I hate you."}])
        err = bad.value.body["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "content_policy_violation" and err["rule"] == "block-harmful-input"

        # validation errors name the field, in the same shape
        with pytest.raises(anthropic.BadRequestError) as missing:
            client.messages.create(model="demo", max_tokens=16, messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}])  # type: ignore[list-item]
        assert missing.value.body["error"]["param"] == "messages[0].content[0].type"

        # a recited passage is cut mid-stream and its source named
        released = ""
        with pytest.raises(anthropic.APIStatusError) as cut:
            with client.messages.stream(model="demo", max_tokens=2048,
                                        messages=[{"role": "user", "content": sentences(PREAMBLE + ESSAY)}]) as s:
                for piece in s.text_stream:
                    released += piece
        assert "kissaten_ja.txt" in str(cut.value.body) and "output-safety" in str(cut.value.body)
        assert released and sentences(PREAMBLE).startswith(released)
        assert ESSAY[:40] not in released.replace(" ", "")

    # one traffic record per request, naming the door
    log = tmp_path / "logs" / "traffic.jsonl"
    recs = [r for r in records(log) if r.get("endpoint") == "messages"]
    assert len(recs) == 7, [r.get("status") for r in recs]
    blocked = next(r for r in recs if r["status"] == 400 and r.get("error_kind") == "content_policy")
    assert any(v["rule"] == "block-harmful-input" for v in blocked["verdicts"])
    cut_rec = next(r for r in recs if r.get("finish_reason") == "content_filter")
    assert cut_rec["stream"] is True and any(v["rule"] == "output-safety" for v in cut_rec["verdicts"])


@pytest.fixture
def seeded_prompts(tmp_path: Path) -> Path:
    from gateway.prompts import PromptRegistry, parse_spec
    from gateway.prompts.store import SQLitePromptStore

    db = tmp_path / "prompts.db"

    async def seed() -> None:
        reg = PromptRegistry(SQLitePromptStore(db))
        pv, _ = await reg.push(parse_spec({"id": "tutor", "messages": [{"role": "system", "template": "You tutor {{ level }} students."}],
                                           "variables": ["level"]}))
        await reg.set_label("tutor", "production", pv.version)
        await reg.aclose()

    asyncio.run(seed())
    return db


def test_prompt_and_grounding_are_injected_on_the_messages_door(fake_upstream, seeded_prompts, tmp_path: Path) -> None:
    from evaluators.embedding import shared_embedder
    from gateway.grounding.builder import build_index
    from gateway.grounding.text import iter_documents
    from tests.test_grounding import DOCS  # the grounding tests' small corpus

    index = tmp_path / "docs-index"
    build_index(iter_documents([DOCS]), index, shared_embedder(), index_type="auto", max_chars=300, progress=False)
    up_url, upstream = fake_upstream
    settings = make_settings([{"name": "tutor", "targets": [anthropic_target(up_url, "echo")]}],
                             prompts={"sqlite_path": str(seeded_prompts)}, grounding={"indexes": {"docs": str(index)}})
    with gateway(settings) as (url, _app):
        client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="tutor", max_tokens=64, messages=[{"role": "user", "content": "Why do we get spring tides?"}],
            extra_body={"prompt": {"id": "tutor", "variables": {"level": "beginner"}}, "grounding": {"index": "docs", "top_k": 2}},
        )
        assert raw.headers["x-gatehouse-prompt"] == "tutor@1"
        assert json.loads(raw.headers["x-gatehouse-grounding"])["chunks"][0]["id"].startswith("tides.txt#")
        assert raw.parse().content[0].text == "Why do we get spring tides?"
        sent = upstream.requests[-1]  # what the Anthropic upstream received
        assert "prompt" not in sent and "grounding" not in sent
        assert sent["system"].startswith("You tutor beginner students.") and "[1] Why the sea has tides" in sent["system"]
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Why do we get spring tides?"}]}]


@pytest.mark.parametrize("upstream_kind", ["openai", "anthropic"])
def test_tool_use_round_trip_over_either_upstream(fake_upstream, upstream_kind: str) -> None:
    up_url, upstream = fake_upstream
    t = target(up_url, "tool:lookup") if upstream_kind == "openai" else anthropic_target(up_url, "tool:lookup")
    with gateway(make_settings([{"name": "agent", "targets": [t]}])) as (url, _app):
        client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
        first = client.messages.create(model="agent", max_tokens=64, tools=[TOOL], tool_choice={"type": "auto"},  # type: ignore[list-item]
                                       messages=[{"role": "user", "content": "gatehouse"}])
        assert first.stop_reason == "tool_use"
        (call,) = [b for b in first.content if b.type == "tool_use"]
        assert call.name == "lookup" and call.input == {"query": "gatehouse"}
        history = [{"role": "user", "content": "gatehouse"}, {"role": "assistant", "content": first.content},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a gate with a house"}]}]
        second = client.messages.create(model="agent", max_tokens=64, tools=[TOOL], messages=history)  # type: ignore[arg-type,list-item]
        assert second.stop_reason == "end_turn" and second.content[0].text == "lookup says: a gate with a house"

        with client.messages.stream(model="agent", max_tokens=64, tools=[TOOL], messages=[{"role": "user", "content": "gate"}]) as s:  # type: ignore[list-item]
            final = s.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.type, getattr(b, "input", None)) for b in final.content] == [("tool_use", {"query": "gate"})]
        if upstream_kind == "anthropic":
            sent = upstream.requests[-1]
            assert sent["tools"][0]["name"] == "lookup" and sent["stream"] is True


def test_openai_doors_served_by_an_anthropic_upstream(fake_upstream) -> None:
    up_url, upstream = fake_upstream
    settings = make_settings([{"name": "claude", "targets": [anthropic_target(up_url, "echo")]},
                              {"name": "claude-tools", "targets": [anthropic_target(up_url, "tool:lookup")]}])
    with gateway(settings) as (url, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        r = client.chat.completions.create(model="claude", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello there"}],
                                           max_tokens=32, stop=["zzz"])
        assert r.choices[0].message.content == "hello there" and r.choices[0].finish_reason == "stop"
        assert r.usage is not None and r.usage.completion_tokens == 2
        sent = upstream.requests[-1]
        assert sent["system"] == "sys" and sent["max_tokens"] == 32 and sent["stop_sequences"] == ["zzz"]
        chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"

        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        first = client.chat.completions.create(model="claude-tools", messages=[{"role": "user", "content": "gate"}], tools=tools)  # type: ignore[list-item]
        (call,) = first.choices[0].message.tool_calls or []
        assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"query": "gate"}
        second = client.chat.completions.create(model="claude-tools", tools=tools, messages=[  # type: ignore[list-item]
            {"role": "user", "content": "gate"}, first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "an opening"}])
        assert second.choices[0].message.content == "lookup says: an opening"
        sent = upstream.requests[-1]
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "an opening"}

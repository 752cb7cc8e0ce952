"""The OpenAI Responses door (POST /v1/responses, GET /v1/responses/{id}).

The official `openai` SDK (`client.responses`) against a real gateway on loopback: the demo
gateway for governance, real fake upstreams of both protocols for translation, streaming
and not, with a function-call round trip and stored responses continued by
`previous_response_id`.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.support import API_KEY, anthropic_target, gateway, make_settings, target
from tests.test_door_messages import DEMO_KEY, demo_settings, records, seeded_prompts  # noqa: F401 (fixtures)
from tests.test_recitation_demo import ESSAY, PREAMBLE, sentences

TOOLS = [{"type": "function", "name": "lookup", "description": "look a word up", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]


def test_demo_gateway_serves_and_governs_the_responses_door(demo_settings, tmp_path: Path) -> None:  # noqa: F811
    with gateway(demo_settings) as (url, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0)
        r = client.responses.create(model="demo", input="hello responses door", instructions="be brief")
        assert r.object == "response" and r.status == "completed" and r.output_text == "hello responses door"
        assert r.usage is not None and r.usage.output_tokens == 3

        events = list(client.responses.create(model="demo", input=[{"role": "user", "content": "one two three"}], stream=True))
        kinds = [e.type for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two three"
        assert events[-1].response.output_text == "one two three"  # type: ignore[union-attr]

        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(model="demo", input="You are a worthless idiot and I hate you.")
        assert bad.value.body["code"] == "content_policy_violation" and bad.value.body["rule"] == "block-harmful-input"

        with pytest.raises(openai.BadRequestError) as unknown:
            client.responses.create(model="demo", input=[{"type": "reasoning", "summary": []}])  # type: ignore[list-item]
        assert unknown.value.body["param"] == "input[0].type"

        released = ""
        errors = []
        for e in client.responses.create(model="demo", input=sentences(PREAMBLE + ESSAY), stream=True):
            if e.type == "response.output_text.delta":
                released += e.delta
            elif e.type == "error":
                errors.append(e)
        assert errors and "kissaten_ja.txt" in errors[0].message and errors[0].code == "content_policy_violation"
        assert released and sentences(PREAMBLE).startswith(released)
        assert ESSAY[:40] not in released.replace(" ", "")

    recs = [r for r in records(tmp_path / "logs" / "traffic.jsonl") if r.get("endpoint") == "responses"]
    assert len(recs) == 5
    assert any(r.get("finish_reason") == "content_filter" and r["stream"] for r in recs)


@pytest.mark.parametrize("upstream_kind", ["openai", "anthropic"])
def test_function_call_round_trip_and_stored_conversation(fake_upstream, upstream_kind: str) -> None:
    up_url, upstream = fake_upstream
    make = target if upstream_kind == "openai" else anthropic_target
    settings = make_settings([{"name": "agent", "targets": [make(up_url, "tool:lookup")]},
                              {"name": "echo", "targets": [make(up_url, "echo")]}])
    with gateway(settings) as (url, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        first = client.responses.create(model="agent", input="gatehouse", tools=TOOLS, store=True)  # type: ignore[arg-type]
        (call,) = [o for o in first.output if o.type == "function_call"]
        assert call.name == "lookup" and json.loads(call.arguments) == {"query": "gatehouse"}
        second = client.responses.create(model="agent", previous_response_id=first.id, tools=TOOLS,  # type: ignore[arg-type]
                                         input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a gate with a house"}])
        assert second.output_text == "lookup says: a gate with a house"
        assert second.previous_response_id == first.id
        assert client.responses.retrieve(first.id).id == first.id

        # stateless by default: a response not stored cannot be continued or fetched
        plain = client.responses.create(model="echo", input="not kept")
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(plain.id)
        with pytest.raises(openai.NotFoundError) as nf:
            client.responses.create(model="echo", input="x", previous_response_id=plain.id)
        assert nf.value.body["param"] == "previous_response_id"

        # streamed function call, then text.format passed on as a response format
        events = list(client.responses.create(model="agent", input="gate", tools=TOOLS, stream=True))  # type: ignore[arg-type]
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert done and json.loads(done[0].arguments) == {"query": "gate"}
        assert events[-1].type == "response.completed"
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        client.responses.create(model="echo", input="{}", text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
        if upstream_kind == "openai":
            assert upstream.requests[-1]["response_format"] == {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_other_tenants_cannot_read_a_stored_response(fake_upstream, tmp_path: Path) -> None:
    up_url, _ = fake_upstream
    settings = make_settings([{"name": "echo", "targets": [target(up_url, "echo")]}],
                             auth={"keys": [{"id": "a", "tenant": "acme", "key": "sk-acme"}, {"id": "b", "tenant": "globex", "key": "sk-globex"}]},
                             responses={"sqlite_path": str(tmp_path / "responses.db")})
    with gateway(settings) as (url, _app):
        acme = openai.OpenAI(base_url=url + "/v1", api_key="sk-acme", max_retries=0)
        globex = openai.OpenAI(base_url=url + "/v1", api_key="sk-globex", max_retries=0)
        kept = acme.responses.create(model="echo", input="acme secret", store=True)
        assert acme.responses.retrieve(kept.id).output_text == "acme secret"
        with pytest.raises(openai.NotFoundError):
            globex.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.create(model="echo", input="x", previous_response_id=kept.id)
        # the store is written before the client gets the reply: a streamed response is
        # retrievable as soon as its response.completed event has arrived
        with acme.responses.stream(model="echo", input="streamed secret", store=True) as stream:
            done = stream.get_final_response()
        assert acme.responses.retrieve(done.id).output_text == "streamed secret"

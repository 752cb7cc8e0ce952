"""Prompt registry: versions, labels, rollback, diff, rendering, the stage, CLI, admin API, Redis."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from gateway.config import parse_settings
from gateway.errors import GatewayError
from gateway.prompts import (
    PromptFormatError,
    PromptNotFound,
    PromptRegistry,
    PromptStage,
    build_stage,
    parse_spec,
)
from gateway.prompts.store import PromptStoreError, RedisPromptStore, SQLitePromptStore
from gateway.protocols.chat import request_out
from gateway.types import Caller, RequestContext, TrafficRecord
from tests.conftest import REDIS_URL

TRIAGE = {
    "id": "support-triage",
    "messages": [
        {"role": "system", "template": "You triage tickets for {{ product }}. Answer in {{ language }}."},
        {"role": "user", "template": "Ticket priority scale: {{ levels | join(', ') }}"},
    ],
    "variables": {"product": {"description": "product name"}, "language": {"default": "English"}, "levels": {"default": ["P1", "P2"]}},
    "parameters": {"temperature": 0.2, "max_tokens": 300},
    "model": "gpt-4o-mini",
    "author": "alice@example.com",
    "note": "first version",
}


def spec(**changes):
    return parse_spec({**TRIAGE, **changes})


def ctx_for(body: dict) -> RequestContext:
    rec = TrafficRecord(request_id="r1", ts_start=time.time(), endpoint="chat")
    return RequestContext("r1", "chat", Caller("t", "k"), body, {}, rec)


@pytest.fixture(params=["sqlite", "redis"])
async def registry(request, tmp_path, redis_prefix):
    if request.param == "sqlite":
        reg = PromptRegistry(SQLitePromptStore(tmp_path / "prompts.db"))
        yield reg
        await reg.aclose()
    else:
        client = aioredis.from_url(REDIS_URL)
        yield PromptRegistry(RedisPromptStore(client, redis_prefix))
        await client.aclose()


async def test_lifecycle_versions_labels_rollback_diff(registry: PromptRegistry):
    v1, created = await registry.push(spec())
    assert (v1.version, created) == (1, True)
    same, created = await registry.push(spec(note="same content, other note"))
    assert (same.version, created) == (1, False), "identical content must not make a new version"
    v2, _ = await registry.push(spec(parameters={"temperature": 0.7}, note="warmer"))
    v3, _ = await registry.push(spec(messages=[{"role": "system", "template": "Triage for {{ product }}."}]))
    assert [v.version for v in await registry.versions("support-triage")] == [1, 2, 3]
    # versions are immutable: v1 still has what was pushed first
    again = await PromptRegistry(registry.store).get_version("support-triage", 1)
    assert again.parameters == {"temperature": 0.2, "max_tokens": 300} and again.content_hash == v1.content_hash
    assert len({v1.content_hash, v2.content_hash, v3.content_hash}) == 3

    # bare id without labels -> latest; with production -> the label
    assert (await registry.resolve("support-triage")).version == 3
    await registry.set_label("support-triage", "production", 1)
    await registry.set_label("support-triage", "production", 2)
    await registry.set_label("support-triage", "staging", 3)
    assert (await registry.resolve("support-triage")).version == 2
    assert (await registry.resolve("support-triage:staging")).version == 3
    assert (await registry.resolve("support-triage@1")).version == 1
    assert await registry.labels("support-triage") == {"production": 2, "staging": 3}
    [summary] = await registry.list()
    assert (summary.id, summary.latest, summary.labels) == ("support-triage", 3, {"production": 2, "staging": 3})

    # rollback moves the label to the version it pointed to before, repeatedly
    await registry.set_label("support-triage", "production", 3)
    assert await registry.rollback("support-triage", "production") == (3, 2)
    assert (await registry.resolve("support-triage:production")).version == 2
    assert await registry.rollback("support-triage", "production") == (2, 1)
    with pytest.raises(PromptStoreError, match="no earlier version"):
        await registry.rollback("support-triage", "production")
    with pytest.raises(PromptNotFound, match="no version 9"):
        await registry.set_label("support-triage", "production", 9)
    with pytest.raises(PromptNotFound):
        await registry.resolve("support-triage:canary")
    with pytest.raises(PromptNotFound):
        await registry.resolve("nope")

    diff = await registry.diff("support-triage", 1, 2)
    assert "-  temperature: 0.2" in diff and "+  temperature: 0.7" in diff and "+note: warmer" in diff
    assert await registry.diff("support-triage", 1, 1) == ""


def test_push_validation_names_the_problem():
    with pytest.raises(PromptFormatError, match=r"undeclared variable.*customer"):
        parse_spec({**TRIAGE, "messages": [{"role": "system", "template": "Hi {{ customer }}"}]})
    with pytest.raises(PromptFormatError, match="role"):
        parse_spec({**TRIAGE, "messages": [{"role": "robot", "template": "x"}]})
    with pytest.raises(PromptFormatError, match="parameters model cannot be defaulted"):
        parse_spec({**TRIAGE, "parameters": {"model": "x"}})
    with pytest.raises(PromptFormatError, match=r"unknown key.*templates"):
        parse_spec({**TRIAGE, "templates": []})


async def test_render_errors_name_the_variable(tmp_path):
    reg = PromptRegistry(SQLitePromptStore(tmp_path / "p.db"))
    await reg.push(spec())
    stage = PromptStage(reg)
    with pytest.raises(GatewayError) as ei:
        await stage.on_request(ctx_for({"model": "m", "messages": [], "prompt": {"id": "support-triage", "variables": {}}}))
    assert ei.value.status == 400 and "product" in ei.value.message and ei.value.param == "prompt.variables.product"
    with pytest.raises(GatewayError) as ei:
        await stage.on_request(
            ctx_for({"model": "m", "prompt": {"id": "support-triage", "variables": {"product": "x", "colour": "red"}}})
        )
    assert ei.value.status == 400 and "colour" in ei.value.message and ei.value.param == "prompt.variables.colour"
    # the sandbox refuses attribute games on passed-in values
    await reg.push(parse_spec({"id": "evil", "messages": [{"role": "system", "template": "{{ x.__class__.__mro__ }}"}], "variables": ["x"]}))
    with pytest.raises(GatewayError) as ei:
        await stage.on_request(ctx_for({"model": "m", "prompt": {"id": "evil", "variables": {"x": "s"}}}))
    assert ei.value.status == 400
    with pytest.raises(GatewayError) as ei:
        await stage.on_request(ctx_for({"model": "m", "prompt": {"id": "missing-prompt"}}))
    assert ei.value.status == 404 and ei.value.code == "prompt_not_found"
    await reg.aclose()


async def test_stage_merges_messages_defaults_params_and_records(tmp_path):
    reg = PromptRegistry(SQLitePromptStore(tmp_path / "p.db"))
    await reg.push(spec())
    await reg.push(spec(note="v2", parameters={"temperature": 0.9}))
    await reg.set_label("support-triage", "production", 1)
    stage = PromptStage(reg)
    body = {
        "model": "chat-default",
        "messages": [{"role": "user", "content": "My invoice is wrong"}],
        "max_tokens": 50,
        "prompt": {"id": "support-triage", "variables": {"product": "Gatehouse"}},
    }
    ctx = ctx_for(body)
    await stage.on_request(ctx)
    sent = request_out(ctx.request)  # what goes upstream
    assert "prompt" not in sent, "the prompt reference must not be forwarded upstream"
    assert sent["messages"] == [
        {"role": "system", "content": "You triage tickets for Gatehouse. Answer in English."},
        {"role": "user", "content": "Ticket priority scale: P1, P2"},
        {"role": "user", "content": "My invoice is wrong"},
    ]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50  # caller's value wins
    assert ctx.response_headers["x-gatehouse-prompt"] == "support-triage@1"
    assert (ctx.record.prompt_id, ctx.record.prompt_version) == ("support-triage", "1")
    assert ctx.record.extra["prompt_model_hint"] == "gpt-4o-mini"

    ctx = ctx_for({"model": "m", "messages": [], "prompt": {"id": "support-triage", "version": 2, "variables": {"product": "X"}}})
    await stage.on_request(ctx)
    assert ctx.response_headers["x-gatehouse-prompt"] == "support-triage@2" and request_out(ctx.request)["temperature"] == 0.9
    ctx = ctx_for({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await stage.on_request(ctx)
    assert request_out(ctx.request)["messages"] == [{"role": "user", "content": "hi"}] and not ctx.response_headers

    # a route pin via build_stage; requests on that route may only pass variables
    settings = parse_settings(
        {
            "prompts": {"sqlite_path": str(tmp_path / "p.db")},
            "routes": [{"name": "triage", "prompt": "support-triage:production", "targets": [{"provider": "mock", "model": "echo"}]}],
        }
    )
    pinned = await build_stage(SimpleNamespace(settings=settings, redis=None))
    ctx = ctx_for({"model": "triage", "messages": [{"role": "user", "content": "hi"}], "prompt": {"variables": {"product": "P"}}})
    await pinned.on_request(ctx)
    assert ctx.response_headers["x-gatehouse-prompt"] == "support-triage@1"
    with pytest.raises(GatewayError, match="pins prompt"):
        await pinned.on_request(ctx_for({"model": "triage", "prompt": {"id": "support-triage", "version": 2}}))
    await pinned.aclose()
    await reg.aclose()


async def test_label_move_reaches_another_replica_within_a_second(redis_prefix):
    a_client, b_client = aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)
    a = PromptRegistry(RedisPromptStore(a_client, redis_prefix))
    b = PromptRegistry(RedisPromptStore(b_client, redis_prefix))
    try:
        await a.push(spec())
        await a.push(spec(note="v2", parameters={"temperature": 1.0}))
        await a.set_label("support-triage", "production", 1)
        assert (await b.resolve("support-triage:production")).version == 1  # b has it cached now
        pubsub = b_client.pubsub()
        await pubsub.subscribe(b.store.events_channel)
        t0 = time.perf_counter()
        await a.set_label("support-triage", "production", 2)
        seen = None
        while time.perf_counter() - t0 < 1.0:
            seen = (await b.resolve("support-triage:production")).version
            if seen == 2:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        assert seen == 2 and elapsed < 1.0, f"replica b still saw v{seen} after {elapsed:.3f}s"
        event = None
        while event is None and time.perf_counter() - t0 < 1.0:
            event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        assert event is not None and b'"version": 2' in event["data"]
        await pubsub.aclose()
    finally:
        await a_client.aclose()
        await b_client.aclose()


def test_cli_push_label_show_diff_rollback(tmp_path, capsys):
    from gateway.cli.prompts import main

    db = str(tmp_path / "cli.db")
    f = tmp_path / "triage.yaml"
    f.write_text(
        "id: greet\nmessages:\n  - role: system\n    template: 'Greet {{ name }} warmly.'\nvariables: [name]\n"
        "parameters: {temperature: 0.1}\nauthor: bob\nnote: first\n"
    )
    assert main(["--db", db, "push", str(f)]) == 0
    f.write_text(f.read_text().replace("warmly", "briefly").replace("first", "shorter"))
    assert main(["--db", db, "push", str(f)]) == 0
    assert main(["--db", db, "label", "greet", "1", "production"]) == 0
    assert main(["--db", db, "label", "greet", "2", "production"]) == 0
    assert main(["--db", db, "list"]) == 0
    assert main(["--db", db, "show", "greet:production"]) == 0
    assert main(["--db", db, "diff", "greet", "1", "2"]) == 0
    assert main(["--db", db, "rollback", "greet", "production"]) == 0
    out = capsys.readouterr().out
    assert "pushed greet@1" in out and "pushed greet@2" in out
    assert "greet\tlatest=2\tproduction=2" in out
    assert "greet@2" in out and "Greet {{ name }} briefly." in out
    assert "-  template: Greet {{ name }} warmly." in out and "+  template: Greet {{ name }} briefly." in out
    assert "greet:production -> 1 (was 2)" in out
    assert main(["--db", db, "rollback", "greet", "production"]) == 1
    assert "no earlier version" in capsys.readouterr().err
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"prompts:\n  store: sqlite\n  sqlite_path: {db}\n")
    assert main(["--config", str(cfg), "show", "greet:production"]) == 0
    assert "greet@1" in capsys.readouterr().out


def test_admin_api(tmp_path):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from gateway.prompts.admin import admin_routes

    reg = PromptRegistry(SQLitePromptStore(tmp_path / "admin.db"))
    with TestClient(Starlette(routes=admin_routes(reg))) as client:
        r = client.post("/admin/prompts", json=TRIAGE)
        assert r.status_code == 201 and r.json()["version"] == 1
        assert client.post("/admin/prompts", json=TRIAGE).status_code == 200
        bad = client.post("/admin/prompts", json={**TRIAGE, "messages": [{"role": "system", "template": "{{ oops }}"}]})
        assert bad.status_code == 400 and "oops" in bad.json()["error"]["message"]
        assert client.post("/admin/prompts/support-triage/labels", json={"label": "production", "version": 1}).json()["version"] == 1
        assert client.post("/admin/prompts/support-triage/labels", json={"label": "production", "version": 7}).status_code == 404
        assert client.get("/admin/prompts").json()["data"] == [{"id": "support-triage", "latest": 1, "labels": {"production": 1}}]
        one = client.get("/admin/prompts/support-triage").json()
        assert one["labels"] == {"production": 1} and one["versions"][0]["author"] == "alice@example.com"
        assert client.get("/admin/prompts/support-triage", params={"label": "production"}).json()["version"] == 1
        assert client.get("/admin/prompts/nope").status_code == 404

"""Response cache stage on real Redis: hit/miss, isolation, what must never be stored."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.cache import HEADER, CacheStage, build_stage
from gateway.config import Settings, parse_settings
from gateway.metrics import Metrics
from gateway.protocols.chat import reply_in, reply_out
from gateway.types import Caller, RequestContext, TrafficRecord, Verdict
from tests.conftest import REDIS_URL

REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,  # the stored entry is the canonical Chat serialisation, which always has it
    "model": "cached",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@dataclass
class Services:
    settings: Settings
    redis: Any
    metrics: Metrics


def settings(prefix: str, ttl: int = 60) -> Settings:
    target = {"provider": "mock", "model": "echo"}
    return parse_settings(
        {
            "redis": {"url": REDIS_URL, "key_prefix": prefix},
            "cache": {"ttl_seconds": ttl},
            "routes": [{"name": "cached", "targets": [target], "cache": True}, {"name": "plain", "targets": [target]}],
        }
    )


@pytest.fixture
async def stage(redis: aioredis.Redis, prefix: str) -> CacheStage:
    st = await build_stage(Services(settings(prefix), redis, Metrics()))
    assert isinstance(st, CacheStage)
    return st


def ctx(model: str = "cached", tenant: str = "acme", headers: dict[str, str] | None = None, **body: Any) -> RequestContext:
    b = {"model": model, "messages": [{"role": "user", "content": "hello"}], "temperature": 0, **body}
    rid = uuid.uuid4().hex
    return RequestContext(
        request_id=rid,
        endpoint="chat",
        caller=Caller(tenant=tenant, key_id="k"),
        body=b,
        headers=headers or {},
        record=TrafficRecord(request_id=rid, ts_start=time.time(), endpoint="chat"),
    )


async def roundtrip(stage: CacheStage, c: RequestContext, reply: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run the stage like the app: on_request, then (on a miss) on_response with the upstream
    reply (read into the neutral model, as a provider hands it); a hit comes back in Chat JSON."""
    await stage.on_request(c)
    if c.short_circuit is not None:
        return reply_out(c.short_circuit)
    await stage.on_response(c, reply_in(copy.deepcopy(reply or REPLY)))
    return None


async def test_miss_then_hit(stage: CacheStage, redis: aioredis.Redis, prefix: str) -> None:
    c1 = ctx()
    assert await roundtrip(stage, c1) is None
    assert c1.response_headers[HEADER] == "miss" and c1.record.cache_hit is False
    c2 = ctx()
    assert await roundtrip(stage, c2) == REPLY
    assert c2.response_headers[HEADER] == "hit" and c2.record.cache_hit is True
    # JSON in Redis, with a TTL, tenant in the key
    keys = [k async for k in redis.scan_iter(match=prefix + "cache:*")]
    assert len(keys) == 1 and keys[0].startswith(f"{prefix}cache:acme:".encode())
    entry = orjson.loads(await redis.get(keys[0]))
    assert entry["response"] == REPLY
    assert 0 < await redis.ttl(keys[0]) <= 60


async def test_key_normalisation_and_isolation(stage: CacheStage) -> None:
    await roundtrip(stage, ctx(user="alice", stream=False))
    # transport-only fields don't matter, key order doesn't matter
    c = ctx(user="bob")
    c.body = dict(reversed(list(c.body.items())))
    assert await roundtrip(stage, c) == REPLY
    # another tenant, different params, different prompt or policy version: misses
    assert await roundtrip(stage, ctx(tenant="other")) is None
    assert await roundtrip(stage, ctx(temperature=0.5)) is None
    c = ctx()
    c.record.prompt_version = "v2"
    assert await roundtrip(stage, c) is None
    c = ctx()
    c.record.policy_version = "p7"  # stamped by the app before the stages run
    assert await roundtrip(stage, c) is None
    c = ctx()
    c.caller.policy = "strict"
    assert await roundtrip(stage, c) is None


async def test_opt_in_route_and_streaming_bypass(stage: CacheStage) -> None:
    c = ctx(model="plain")
    await roundtrip(stage, c)
    assert HEADER not in c.response_headers and c.record.cache_hit is None
    c = ctx(model="plain")
    assert await roundtrip(stage, c) is None
    c = ctx(stream=True)
    await roundtrip(stage, c)
    assert HEADER not in c.response_headers
    assert await roundtrip(stage, ctx()) is None  # the streamed request stored nothing


@pytest.mark.parametrize("action", ["block", "flag", "redact"])
async def test_never_stores_unsafe_verdicts(stage: CacheStage, action: str) -> None:
    c = ctx()
    await stage.on_request(c)
    c.record.verdicts.append(Verdict("r", "toxicity", "toxic", 0.9, action, "output"))
    await stage.on_response(c, reply_in(copy.deepcopy(REPLY)))
    assert await roundtrip(stage, ctx()) is None


async def test_never_stores_content_filter_or_errors(stage: CacheStage) -> None:
    filtered = copy.deepcopy(REPLY)
    filtered["choices"][0]["finish_reason"] = "content_filter"
    await roundtrip(stage, ctx(), filtered)
    await roundtrip(stage, ctx(), {"error": {"message": "x"}})
    c = ctx()
    await stage.on_request(c)
    c.record.finish_reason = "content_filter"
    await stage.on_response(c, reply_in(copy.deepcopy(REPLY)))
    assert await roundtrip(stage, ctx()) is None


async def test_shadow_and_pass_verdicts_are_cached(stage: CacheStage) -> None:
    c = ctx()
    await stage.on_request(c)
    c.record.verdicts.append(Verdict("r", "toxicity", "toxic", 0.1, "shadow", "output"))
    await stage.on_response(c, reply_in(copy.deepcopy(REPLY)))
    assert await roundtrip(stage, ctx()) == REPLY


async def test_cache_control(stage: CacheStage) -> None:
    await roundtrip(stage, ctx(headers={"cache-control": "no-store"}))
    assert await roundtrip(stage, ctx()) is None  # stored by this one
    assert await roundtrip(stage, ctx(headers={"cache-control": "no-cache"})) is None
    assert await roundtrip(stage, ctx()) == REPLY


async def test_redis_down_is_a_miss(prefix: str) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    m = Metrics()
    st = CacheStage(dead, {"cached"}, 60, prefix, m)
    c = ctx()
    assert await roundtrip(st, c) is None
    assert c.response_headers[HEADER] == "miss"
    text = m.render()[0].decode()
    assert 'gatehouse_cache_errors_total{op="get"} 1.0' in text
    assert 'gatehouse_cache_errors_total{op="set"} 1.0' in text
    await dead.aclose()


async def test_ttl_expiry(redis: aioredis.Redis, prefix: str) -> None:
    st = await build_stage(Services(settings(prefix, ttl=1), redis, Metrics()))
    assert st is not None
    await roundtrip(st, ctx())  # type: ignore[arg-type]
    assert await roundtrip(st, ctx()) == REPLY  # type: ignore[arg-type]
    keys = [k async for k in redis.scan_iter(match=prefix + "cache:*")]
    await redis.pexpire(keys[0], 1)  # let it expire now rather than sleeping a second
    await asyncio.sleep(0.01)
    assert await roundtrip(st, ctx()) is None  # type: ignore[arg-type]


async def test_build_stage_off(prefix: str) -> None:
    s = parse_settings({"routes": [{"name": "r", "targets": [{"provider": "mock", "model": "echo"}]}]})
    assert await build_stage(Services(s, None, Metrics())) is None
    assert await build_stage(Services(settings(prefix), None, Metrics())) is None  # no redis: off, logged


def test_gateway_serves_cache_hits(prefix: str) -> None:
    """Through the real app: the second identical request is a hit and skips the upstream."""
    support = pytest.importorskip("tests.support")
    import httpx

    settings = support.make_settings(
        [{"name": "cached", "cache": True, "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}],
        redis={"url": REDIS_URL, "key_prefix": prefix},
    )
    body = {"model": "cached", "messages": [{"role": "user", "content": "hello cache"}], "temperature": 0}
    auth = {"authorization": f"Bearer {support.API_KEY}"}
    with support.gateway(settings) as (url, _app):
        r1 = httpx.post(url + "/v1/chat/completions", headers=auth, json=body)
        r2 = httpx.post(url + "/v1/chat/completions", headers=auth, json=body)
        r3 = httpx.post(url + "/v1/chat/completions", headers=auth, json={**body, "stream": True})
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["x-gatehouse-cache"] == "miss" and r2.headers["x-gatehouse-cache"] == "hit"
    assert r2.json()["choices"] == r1.json()["choices"]
    assert "x-gatehouse-cache" not in r3.headers


def test_a_hit_replays_on_every_door(prefix: str) -> None:
    """The entry is the neutral reply: stored through the Chat door, it replays on the Messages
    and Responses doors in their own shapes (equal requests share a key across doors)."""
    support = pytest.importorskip("tests.support")
    import httpx

    settings = support.make_settings(
        [{"name": "cached", "cache": True, "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}],
        redis={"url": REDIS_URL, "key_prefix": prefix},
    )
    turn = [{"role": "user", "content": "hello every door"}]
    auth = {"authorization": f"Bearer {support.API_KEY}"}
    with support.gateway(settings) as (url, _app), httpx.Client(timeout=30, headers=auth) as c:
        r1 = c.post(url + "/v1/chat/completions", json={"model": "cached", "messages": turn, "max_tokens": 20, "temperature": 0})
        r2 = c.post(url + "/v1/messages", json={"model": "cached", "messages": turn, "max_tokens": 20, "temperature": 0})
        r3 = c.post(url + "/v1/responses", json={"model": "cached", "input": turn, "max_output_tokens": 20, "temperature": 0})
    assert r1.status_code == r2.status_code == r3.status_code == 200, (r2.text, r3.text)
    assert [r.headers["x-gatehouse-cache"] for r in (r1, r2, r3)] == ["miss", "hit", "hit"]
    text = r1.json()["choices"][0]["message"]["content"]
    assert text == "hello every door"
    msg = r2.json()
    assert msg["type"] == "message" and msg["content"] == [{"type": "text", "text": text}] and msg["stop_reason"] == "end_turn"
    assert msg["usage"] == {"input_tokens": 3, "output_tokens": 3}
    resp = r3.json()
    assert resp["object"] == "response" and resp["status"] == "completed"
    assert resp["output"][0]["content"][0]["text"] == text

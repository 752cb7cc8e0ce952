"""Online monitor: real Redis stream (unique key, deleted afterwards) and JSONL tail → /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from evaluators.monitor import TrafficMonitor, consume_jsonl, consume_redis, start_exporter


def record(i: int, model: str, variant: str, action: str = "pass", score: float = 0.1, category: str = "toxicity") -> dict[str, Any]:
    return {
        "request_id": f"r{i}",
        "ts_start": 1.0 * i,
        "endpoint": "chat",
        "model": model,
        "variant": variant,
        "status": 400 if action == "block" else 200,
        "verdicts": [
            {"rule": "tox", "check": "safety", "category": category, "score": score, "action": action, "direction": "output"},
            {"rule": "pii", "check": "pii", "category": "pii", "score": 0.0, "action": "pass", "direction": "input"},
        ],
    }


def traffic() -> list[dict[str, Any]]:
    recs = []
    for i in range(20):  # model m / variant a: 2 blocks, 4 flags, scores 0.00..0.95
        action = "block" if i in (3, 7) else "flag" if i in (1, 2, 5, 9) else "pass"
        recs.append(record(i, "m", "a", action, score=i / 20))
    for i in range(20, 30):  # variant b: clean
        recs.append(record(i, "m", "b", "pass", score=0.05))
    return recs


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        await r.ping()
    except Exception as e:  # pragma: no cover - environment without Redis
        await r.aclose()
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({e})")
    yield r
    await r.aclose()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_redis_stream_consumer_exports_rolling_metrics(redis_client: aioredis.Redis) -> None:
    stream = f"gatehouse-test:{uuid.uuid4().hex}:traffic"
    mon = TrafficMonitor(window=100)
    server, thread = start_exporter(mon, port=0)
    try:
        for rec in traffic():
            await redis_client.xadd(stream, {"record": json.dumps(rec)})
        await redis_client.xadd(stream, {"record": b"not json"})
        n = await consume_redis(mon, redis_client, stream, group="g1", consumer="c1", start_id="0", max_records=31)
        assert n == 31 and mon.processed == 30 and mon.skipped == 1
        pending = await redis_client.xpending(stream, "g1")
        assert pending["pending"] == 0  # everything acknowledged

        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{server.server_port}/metrics")
        m = parse_metrics(resp.text)
        assert m['gatehouse_monitor_block_rate{model="m",variant="a"}'] == pytest.approx(0.1)
        assert m['gatehouse_monitor_flag_rate{model="m",variant="a"}'] == pytest.approx(0.2)
        assert m['gatehouse_monitor_block_rate{model="m",variant="b"}'] == 0.0
        assert m['gatehouse_monitor_records_total{model="m",variant="a"}'] == 20
        q50 = m['gatehouse_monitor_safety_score{category="toxicity",model="m",quantile="0.5",variant="a"}']
        assert q50 == pytest.approx(0.475)
        assert m['gatehouse_monitor_category_action_rate{action="block",category="toxicity",model="m",variant="a"}'] == pytest.approx(0.1)

        # new traffic after the group exists is picked up by a second consumer run
        await redis_client.xadd(stream, {"record": json.dumps(record(99, "m", "b", "block", 0.99))})
        assert await consume_redis(mon, redis_client, stream, group="g1", consumer="c1", max_records=1) == 1
        assert mon.snapshot()["groups"]["m/b"]["block_rate"] == pytest.approx(1 / 11)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        await redis_client.delete(stream)
    assert await redis_client.exists(stream) == 0


async def test_rolling_window_forgets_old_traffic() -> None:
    mon = TrafficMonitor(window=5)
    for i in range(5):
        mon.ingest(record(i, "m", "a", "block", 0.9))
    for i in range(5, 10):
        mon.ingest(record(i, "m", "a", "pass", 0.1))
    snap = mon.snapshot()
    assert snap["groups"]["m/a"] == {"total": 10, "window": 5, "block_rate": 0.0, "flag_rate": 0.0}
    assert snap["score_quantiles"]["m/a/toxicity"]["0.99"] == pytest.approx(0.1)


async def test_jsonl_tail_follows_appends_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    recs = traffic()
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[:10]))
    mon = TrafficMonitor()
    caught_up = asyncio.Event()
    ingest = mon.ingest

    def ingest_and_signal(rec: dict[str, Any]) -> None:
        ingest(rec)
        if mon.processed == 20:
            caught_up.set()

    mon.ingest = ingest_and_signal  # type: ignore[method-assign]
    task = asyncio.create_task(consume_jsonl(mon, log, from_start=True, max_records=len(recs), poll=0.01))
    with log.open("a") as f:  # appended while following, last line in two writes
        for r in recs[10:19]:
            f.write(json.dumps(r) + "\n")
        line = json.dumps(recs[19]) + "\n"
        f.write(line[:15])
        f.flush()
        f.write(line[15:])
    await asyncio.wait_for(caught_up.wait(), 10)  # the tail caught up: now rotate
    os.replace(log, tmp_path / "traffic.jsonl.1")  # rotation
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[20:]))
    assert await asyncio.wait_for(task, 10) == 30
    assert mon.snapshot()["groups"]["m/b"]["total"] == 10


async def test_monitor_consumes_the_gateway_redis_traffic_stream(redis_prefix: str, redis_url: str) -> None:
    """Real gateway → RedisStreamSink → XREADGROUP consumer (keys under the per-test prefix)."""
    from tests.support import API_KEY, gateway, make_settings

    stream = redis_prefix + "traffic"
    settings = make_settings(
        [{"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo", "variant": "blue"}]}],
        redis={"url": redis_url, "key_prefix": redis_prefix},
        traffic_log={"sink": "redis", "stream": stream},
    )
    with gateway(settings) as (url, _app):
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {API_KEY}"}) as client:
            for i in range(3):
                r = await client.post("/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": f"hi {i}"}]})
                assert r.status_code == 200
    # leaving the context drains the traffic log into the stream
    r = aioredis.Redis.from_url(redis_url)
    try:
        mon = TrafficMonitor()
        assert await consume_redis(mon, r, stream, group=redis_prefix + "g", start_id="0", max_records=3) == 3
    finally:
        await r.aclose()
    assert mon.snapshot()["groups"] == {"echo/blue": {"total": 3, "window": 3, "block_rate": 0.0, "flag_rate": 0.0}}

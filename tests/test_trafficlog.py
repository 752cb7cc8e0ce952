"""The traffic log: one record per request, bounded queue, rotation, Redis stream, `logs tail`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import openai
import orjson
import pytest
import redis

from gatehouse_core.trafficlog import read_jsonl
from gateway.metrics import Metrics
from gateway.trafficlog import JsonlSink, TrafficLog
from gateway.types import TrafficRecord
from tests.support import API_KEY, gateway, make_settings, target

MSG = [{"role": "user", "content": "log me"}]


def test_jsonl_records_and_logs_tail(fake_upstream, tmp_path):
    u, _ = fake_upstream
    log_path = tmp_path / "traffic.jsonl"
    settings = make_settings([{"name": "m", "targets": [target(u, "echo", variant="A")]}],
                             traffic_log={"sink": "jsonl", "path": str(log_path), "log_bodies": False})
    with gateway(settings) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        ids = [c.chat.completions.with_raw_response.create(model="m", messages=MSG, user="u1").headers["x-request-id"] for _ in range(3)]
        list(c.chat.completions.create(model="m", messages=MSG, stream=True))
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="missing", messages=MSG)
    # shutdown flushed the queue
    recs = list(read_jsonl(log_path))
    assert len(recs) == 5
    by_id = {r["request_id"]: r for r in recs}
    r0 = by_id[ids[0]]
    assert r0["model"] == "m" and r0["target"] == "echo" and r0["variant"] == "A" and r0["status"] == 200
    assert r0["tenant"] == "test" and r0["key_id"] == "test-key" and r0["user"] == "u1"
    assert r0["prompt_tokens"] == 2 and r0["completion_tokens"] == 2 and r0["latency_ms"] > 0
    assert r0["request_body"] is None  # bodies only when config says so
    stream_rec = next(r for r in recs if r["stream"])
    assert stream_rec["ttft_ms"] is not None and stream_rec["completion_tokens"] == 2
    assert recs[-1]["status"] == 404 and recs[-1]["error_kind"] == "not_found"
    out = subprocess.run([sys.executable, "-m", "gateway", "logs", "tail", "--file", str(log_path), "-n", "2", "--json"],
                         capture_output=True, text=True, check=True)
    lines = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert [x["request_id"] for x in lines] == [r["request_id"] for r in recs[-2:]]


def test_bodies_logged_when_configured(fake_upstream, tmp_path):
    u, _ = fake_upstream
    log_path = tmp_path / "t.jsonl"
    settings = make_settings([{"name": "m", "targets": [target(u, "echo")]}],
                             traffic_log={"sink": "jsonl", "path": str(log_path), "log_bodies": True})
    with gateway(settings) as (url, _):
        openai.OpenAI(base_url=url + "/v1", api_key=API_KEY).chat.completions.create(model="m", messages=MSG)
    (rec,) = read_jsonl(log_path)
    assert rec["request_body"]["messages"] == MSG
    assert rec["response_body"]["choices"][0]["message"]["content"] == "log me"


def test_redis_stream_sink(fake_upstream, redis_prefix, redis_url):
    u, _ = fake_upstream
    settings = make_settings([{"name": "m", "targets": [target(u, "echo")]}],
                             redis={"url": redis_url, "key_prefix": redis_prefix}, traffic_log={"sink": "redis", "stream": "traffic"})
    with gateway(settings) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY)
        ids = {c.chat.completions.with_raw_response.create(model="m", messages=MSG).headers["x-request-id"] for _ in range(4)}
    r = redis.Redis.from_url(redis_url)
    try:
        key = redis_prefix + "traffic"
        # a consumer group reads every record exactly once
        r.xgroup_create(key, "evaluators", id="0")
        got = r.xreadgroup("evaluators", "c1", {key: ">"}, count=100)
        recs = [orjson.loads(f[b"record"]) for _, entries in got for _, f in entries]
        assert {x["request_id"] for x in recs} == ids
    finally:
        r.close()
    out = subprocess.run([sys.executable, "-m", "gateway", "logs", "tail", "--redis", redis_url, "--stream", key, "-n", "10"],
                         capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) == 4


async def test_full_queue_counts_drops_and_rotation(tmp_path):
    metrics = Metrics()
    sink = JsonlSink(tmp_path / "t.jsonl", max_bytes=2000, backups=2)
    tl = TrafficLog(sink, metrics, queue_size=5, batch_size=2, log_bodies=False)
    # writer not started yet: the queue fills and overflow is counted, never silent
    for i in range(8):
        tl.emit(TrafficRecord(request_id=f"r{i}", ts_start=0.0, endpoint="chat"))
    assert tl.dropped == 3
    assert metrics.log_dropped._value.get() == 3
    tl.start()
    for i in range(8, 40):
        tl.emit(TrafficRecord(request_id=f"r{i}", ts_start=0.0, endpoint="chat"))
        await asyncio.sleep(0)
    await tl.aclose()
    kept = [r["request_id"] for r in read_jsonl(tmp_path / "t.jsonl")]
    assert (tmp_path / "t.jsonl.1").exists()  # rotated
    assert tl.written + tl.dropped == 40
    assert len(kept) <= tl.written and kept[-1] == "r39"


async def test_sink_failure_retries_without_loss(tmp_path):
    class Flaky:
        name = "flaky"

        def __init__(self) -> None:
            self.fail = 2
            self.lines: list[bytes] = []

        async def write(self, lines: list[bytes]) -> None:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("sink down")
            self.lines.extend(lines)

        async def aclose(self) -> None:
            return None

    sink = Flaky()
    metrics = Metrics()
    tl = TrafficLog(sink, metrics, queue_size=100, batch_size=10, log_bodies=False)  # type: ignore[arg-type]
    tl.start()
    for i in range(5):
        tl.emit(TrafficRecord(request_id=f"r{i}", ts_start=0.0, endpoint="chat"))
    while len(sink.lines) < 5:
        await asyncio.sleep(0.01)
    await tl.aclose()
    assert [orjson.loads(x)["request_id"] for x in sink.lines] == [f"r{i}" for i in range(5)]
    assert metrics.log_errors.labels("flaky")._value.get() == 2

"""Hardening (#17): logs say no more than policy allows, and a record is bounded.

Findings covered: a recitation verdict wrote 200 characters of the reply into the traffic
log with body logging off; a 2,000-input request wrote a 1.4 MB log line; a 100 KB model
name a 200 KB one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluators.recitation import RecitationIndex
from gateway.guardrails import GuardrailStage
from gateway.protocols.chat import reply_in
from gateway.types import Caller, RequestContext, TrafficRecord
from policies import Engine, PolicySet
from tests.support import API_KEY, gateway, make_settings
from tests.test_guardrails import MOBY, RECITED

POLICY = """\
id: logs
version: 1
owner: tests
rules:
  - id: redact-pii
    direction: input
    action: redact
    checks: [{type: pii}]
  - id: flag-recitation
    direction: output
    action: flag
    checks: [{type: recitation, threshold: 0.5}]
"""
AUTH = {"authorization": f"Bearer {API_KEY}"}


async def test_recitation_verdict_carries_offsets_and_a_hash_never_text(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "moby.txt").write_text(MOBY)
    RecitationIndex.build(tmp_path / "corpus", progress=False).save(tmp_path / "index")
    engine = Engine(PolicySet.from_texts([("p.yaml", POLICY)]), recitation=RecitationIndex.load(tmp_path / "index"))
    stage = GuardrailStage(engine)
    rec = TrafficRecord(request_id="r", ts_start=0.0, endpoint="chat")
    ctx = RequestContext("r", "chat", Caller("acme", "k"), {"model": "m", "messages": []}, {}, rec)
    reply = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"Sure: {RECITED}"}}]}
    await stage.on_response(ctx, reply_in(reply))
    (v,) = [v for v in rec.verdicts if v.check == "recitation"]
    assert v.action == "flag"
    logged = json.dumps(v.detail)
    for i in range(0, len(RECITED) - 24, 12):  # no 24-character piece of the reply or the source
        assert RECITED[i:i + 24] not in logged
    assert v.detail is not None and v.detail["source"] == "moby.txt" and len(v.detail["matched_sha256"]) == 16
    qa, qb = v.detail["query_offsets"]
    assert reply["choices"][0]["message"]["content"][qa:qb] in f"Sure: {RECITED}" and qb - qa > 50


def log_lines(path: Path, n: int) -> list[bytes]:
    deadline = time.monotonic() + 30
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        assert time.monotonic() < deadline, f"{len(lines)} of {n} records logged"
        time.sleep(0.05)


@pytest.fixture
def logged_gateway(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "p.yaml").write_text(POLICY)

    def start(**traffic: Any) -> Any:
        log = tmp_path / "traffic.jsonl"
        settings = make_settings(
            [{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}],
            policies={"paths": [str(tmp_path / "p.yaml")]},
            traffic_log={"sink": "jsonl", "path": str(log), "batch_size": 1, **traffic},
        )
        return gateway(settings), log

    yield start


def test_a_record_grows_with_the_policy_not_the_input(logged_gateway: Any) -> None:
    cm, log = logged_gateway()
    with cm as (url, _), httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        inputs = [f"mail me{i}@example.com about order 12 34 56 78" for i in range(2000)]
        assert c.post("/v1/embeddings", json={"model": "m", "input": inputs}).status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "m" * 100_000, "messages": [{"role": "user", "content": "hi"}]}).status_code == 400
        lines = log_lines(log, 2)
    assert all(len(line) < 8192 for line in lines), [len(line) for line in lines]
    (v,) = json.loads(lines[0])["verdicts"]
    assert (v["rule"], v["action"], v["count"]) == ("redact-pii", "redact", 2000)


def test_an_oversized_record_is_cut_and_counted(logged_gateway: Any) -> None:
    cm, log = logged_gateway(log_bodies=True, max_record_bytes=8192)
    with cm as (url, _), httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        big = "lorem ipsum " * 3000
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": big}]}).status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "small"}]}).status_code == 200
        lines = log_lines(log, 2)
        metrics = c.get("/metrics").text
    first, second = (json.loads(x) for x in lines)
    assert len(lines[0]) <= 8192
    assert first["request_body"]["truncated"] is True and first["request_body"]["bytes"] > 30_000
    assert first["extra"]["truncated_from"] > 60_000
    assert second["request_body"]["messages"][0]["content"] == "small"  # small records keep their bodies
    assert "gatehouse_traffic_records_truncated_total 1.0" in metrics

"""Spend budgets (gateway.budgets) on real gateways sharing the real Redis."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml

from gateway.app import HOT_PATHS
from gateway.budgets import LimitStore, MemoryBackend, window
from gateway.cli import keys as keys_cli
from tests.conftest import REDIS_URL
from tests.support import gateway, make_settings, target

PRICE = {"input": 1000.0, "output": 1000.0}
MSG = [{"role": "user", "content": "hello budget"}]
# one request per door kind in the app's HOT_PATHS (the budget middleware runs before any door parses it)
DOOR_BODIES: dict[str, dict[str, Any]] = {
    "chat": {"messages": MSG},
    "completions": {"prompt": "hi"},
    "embeddings": {"model": "emb", "input": "hi"},
    "moderations": {"input": "hi"},
    "messages": {"max_tokens": 16, "messages": MSG},  # Anthropic Messages
    "responses": {"input": "hi"},  # OpenAI Responses
}
STREAMING_DOORS = {"chat", "completions", "messages", "responses"}


def _settings(upstream: str, prefix: str, limits: list[dict[str, Any]] = (), **budgets: Any) -> Any:  # type: ignore[assignment]
    t = target(upstream, "echo", name="priced", price=PRICE)
    e = target(upstream, "echo", name="priced-emb", price=PRICE)
    return make_settings(
        [{"name": "m", "targets": [t]}, {"name": "other", "targets": [t]}, {"name": "emb", "targets": [e]}],
        auth={"keys": [{"id": "probe", "tenant": "t-probe", "key": "sk-probe"},
                       {"id": "small", "tenant": "t-small", "key": "sk-small"},
                       {"id": "mate", "tenant": "t-small", "key": "sk-mate"}]},
        redis={"url": REDIS_URL, "key_prefix": prefix},
        cost={"header": True},
        budgets={"limits": list(limits), **budgets},
    )


def _post(url: str, key: str, path: str = "/v1/chat/completions", **body: Any) -> httpx.Response:
    body.setdefault("model", "m")
    if "input" not in body and "prompt" not in body:
        body.setdefault("messages", MSG)
    return httpx.post(url + path, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)


def _cost(url: str, **body: Any) -> float:
    r = _post(url, "sk-probe", **body)
    assert r.status_code == 200, r.text
    return float(r.headers["x-gatehouse-cost"])


def test_small_budget_refused_exactly_when_spent_across_two_replicas(fake_upstream: tuple[str, Any], prefix: str) -> None:
    up, _ = fake_upstream
    with gateway(_settings(up, prefix)) as (a, _):
        c = _cost(a)
        limit = {"scope": "key", "id": "small", "period": "day", "amount": 3.5 * c}
        settings = _settings(up, prefix, [limit])
        with gateway(settings) as (b, _), gateway(settings) as (b2, _):
            replicas = [b, b2]
            codes = [_post(replicas[i % 2], "sk-small").status_code for i in range(6)]
            assert codes == [200, 200, 200, 200, 429, 429]  # committed 3c < 3.5c admits the 4th; 4c >= 3.5c refuses
            r = _post(b2, "sk-small")
            err = r.json()["error"]
            assert r.status_code == 429 and err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
            assert err["scope"] == "key" and err["period"] == "day" and err["spent"] == pytest.approx(4 * c)
            assert 0 < int(r.headers["retry-after"]) <= 86_400
            # the tenant's other key has its own (no) key budget
            assert _post(b, "sk-mate").status_code == 200
            metrics = httpx.get(b + "/metrics").text
        assert 'gatehouse_budget_decisions_total{result="denied"}' in metrics


async def test_spend_is_settled_exactly(fake_upstream: tuple[str, Any], prefix: str) -> None:
    up, _ = fake_upstream
    settings = _settings(up, prefix, [{"scope": "tenant", "id": "t-small", "period": "month", "amount": 1e9}])
    with gateway(settings) as (url, app):
        costs = [float(_post(url, k).headers["x-gatehouse-cost"]) for k in ("sk-small", "sk-mate")]
        limits = await app.runtime.budgets.store.for_caller(_caller("mate", "t-small"))
    r = aioredis.from_url(REDIS_URL)
    try:
        from gateway.budgets import Budgets, RedisBackend
        from gateway.cost import Meter
        from gateway.metrics import Metrics

        m = Metrics()
        b = Budgets(settings, LimitStore((), r, prefix), RedisBackend(r), Meter(settings, m), m, prefix=prefix)
        (spent,) = await b.spend(limits)
    finally:
        await r.aclose()
    assert spent == pytest.approx(sum(costs), abs=1e-6)


def _caller(key_id: str, tenant: str) -> Any:
    from gateway.types import Caller

    return Caller(tenant=tenant, key_id=key_id)


def test_every_door_and_streams_are_budgeted(fake_upstream: tuple[str, Any], prefix: str) -> None:
    up, _ = fake_upstream
    with gateway(_settings(up, prefix)) as (a, _):
        c = _cost(a)
    settings = _settings(up, prefix, [{"scope": "tenant", "id": "t-small", "period": "day", "amount": 1.5 * c}])
    with gateway(settings) as (url, _):
        with httpx.stream("POST", url + "/v1/chat/completions", headers={"authorization": "Bearer sk-small"},
                          json={"model": "m", "stream": True, "messages": MSG}) as s:
            assert s.status_code == 200
            s.read()
        # the stream's real cost was settled (c < 1.5c): one more request is admitted, by the tenant's other key
        assert _post(url, "sk-mate").status_code == 200
        # now 2c >= 1.5c: every door, streaming or not, is refused
        for path, kind in HOT_PATHS.items():
            assert kind in DOOR_BODIES, f"new door {path} ({kind}): add a request body to DOOR_BODIES so its budget is tested"
            for stream in (False, True) if kind in STREAMING_DOORS else (False,):
                body = {**DOOR_BODIES[kind], **({"stream": True} if stream else {})}
                r = _post(url, "sk-small", path=path, **body)
                # OpenAI-shaped doors say code budget_exceeded; Anthropic's shape carries the message
                assert r.status_code == 429 and ("budget_exceeded" in r.text or "Budget exceeded" in r.text), (path, stream, r.text)


def test_model_budget_and_soft_threshold(fake_upstream: tuple[str, Any], prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    up, _ = fake_upstream
    with gateway(_settings(up, prefix)) as (a, _):
        c = _cost(a)
    lim = {"scope": "key", "id": "small", "period": "day", "amount": 1.2 * c, "model": "m"}
    with caplog.at_level(logging.WARNING, "gatehouse.budgets"), gateway(_settings(up, prefix, [lim])) as (url, _):
        assert _post(url, "sk-small").status_code == 200  # c / 1.2c = 83% >= 80%: threshold crossed
        assert _post(url, "sk-small").status_code == 200  # c < 1.2c: admitted, overruns by at most its own cost
        assert _post(url, "sk-small").status_code == 429
        assert _post(url, "sk-small", model="other").status_code == 200  # the limit is on model m only
        metrics = httpx.get(url + "/metrics").text
    assert 'gatehouse_budget_threshold_crossed_total{period="day",scope="key",threshold="0.8"} 1.0' in metrics
    assert any("budget threshold" in r.getMessage() and "80%" in r.getMessage() for r in caplog.records)
    ratio = next(ln for ln in metrics.splitlines() if ln.startswith("gatehouse_budget_used_ratio{"))
    assert float(ratio.split()[-1]) == pytest.approx(2 / 1.2, rel=1e-3)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_down_fails_closed_or_open_visibly(fake_upstream: tuple[str, Any], mode: str, caplog: pytest.LogCaptureFixture) -> None:
    up, _ = fake_upstream
    lim = {"scope": "key", "id": "small", "period": "day", "amount": 1.0}
    settings = _settings(up, "gh-test:none:", [lim], on_redis_error=mode)
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"})})
    with caplog.at_level(logging.ERROR, "gatehouse.budgets"), gateway(settings) as (url, _):
        r = _post(url, "sk-small")
        ready = httpx.get(url + "/readyz").json()
        metrics = httpx.get(url + "/metrics").text
    if mode == "closed":
        assert r.status_code == 503 and "budget store unavailable" in r.json()["error"]["message"]
        assert ready["checks"]["budgets"] is False
    else:
        assert r.status_code == 200
        assert ready["checks"]["budgets"] is True
        assert 'gatehouse_budget_decisions_total{result="degraded"} 1.0' in metrics
    assert 'gatehouse_budget_redis_errors_total{op="reserve"} 1.0' in metrics
    assert any("budgets: Redis reserve failed" in r.getMessage() for r in caplog.records)


def test_keys_cli_sets_and_shows_budgets_and_spend(fake_upstream: tuple[str, Any], prefix: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    up, _ = fake_upstream
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"redis": {"url": REDIS_URL, "key_prefix": prefix},
                                   "routes": [{"name": "m", "targets": [target(up, "echo", name="priced", price=PRICE)]}]}))
    assert keys_cli.main(["--config", str(cfg), "budget", "set", "--key", "small", "--period", "day", "--amount", "2.5"]) == 0
    assert keys_cli.main(["--config", str(cfg), "budget", "set", "--tenant", "t-small", "--period", "month", "--amount", "100"]) == 0
    capsys.readouterr()
    with gateway(_settings(up, prefix)) as (url, _):
        cost = float(_post(url, "sk-small").headers["x-gatehouse-cost"])
    assert keys_cli.main(["--config", str(cfg), "budget", "show", "--json"]) == 0
    import orjson

    rows = {(r["scope"], r["period"]): r for r in orjson.loads(capsys.readouterr().out)}
    assert rows[("key", "day")]["amount"] == 2.5 and rows[("key", "day")]["spent"] == pytest.approx(cost, abs=1e-6)
    assert rows[("tenant", "month")]["spent"] == pytest.approx(cost, abs=1e-6)
    assert keys_cli.main(["--config", str(cfg), "budget", "show", "--key", "small"]) == 0
    text = capsys.readouterr().out
    assert "small" in text and "2.5" in text and "t-small" not in text
    assert keys_cli.main(["--config", str(cfg), "budget", "clear", "--key", "small", "--period", "day", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == []
    assert keys_cli.main(["--config", str(cfg), "budget", "set", "--key", "small", "--period", "day", "--amount", "-1"]) == 1


async def test_memory_backend_and_windows() -> None:
    from datetime import UTC, datetime

    wid, left = window("month", datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert wid == "m202612" and left == 3600
    wid, left = window("day", datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    assert wid == "d20261203" and left == 12 * 3600
    from gateway.budgets import Bucket, Limit

    b = Bucket(Limit("key", "k", "day", 1.0), "x", 1_000_000, 10, 10.0)
    mem = MemoryBackend()
    assert (await mem.reserve("r1", [b], 600_000))[0]
    assert (await mem.reserve("r2", [b], 600_000))[0]  # committed 0.6 < 1.0
    assert not (await mem.reserve("r3", [b], 1))[0]  # 1.2 >= 1.0
    assert await mem.settle("r1", [b], 600_000, 100_000) == [100_000]
    assert await mem.spent([b]) == [700_000]

"""Cost per request (gateway.cost) and the overhead header, through a real gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.cli.logs import fmt
from gateway.config import ConfigError, parse_settings
from gateway.cost import Meter, default_tokenizer_path, price_of
from gateway.metrics import Metrics
from tests.support import API_KEY, gateway, make_settings, target

PRICE = {"input": 2.0, "output": 8.0, "cached_input": 0.5}
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _settings(upstream: str, log: Path, **kw: Any) -> Any:
    t = target(upstream, "echo", name="priced", price=PRICE)
    return make_settings([{"name": "m", "targets": [t]}], traffic_log={"sink": "jsonl", "path": str(log)}, **kw)


def _records(log: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log.read_text().splitlines()]


def test_cost_from_usage_header_record_metric_and_tail(fake_upstream: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = fake_upstream
    log = tmp_path / "traffic.jsonl"
    with gateway(_settings(url, log, cost={"header": True})) as (gw, _app):
        r = httpx.post(gw + "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        want = (usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 8.0) / 1e6
        assert float(r.headers["x-gatehouse-cost"]) == pytest.approx(want)
        overhead = float(r.headers["x-gatehouse-overhead-ms"])
        assert overhead >= 0
        # a stream: the client did not ask for usage; the gateway did, and prices it
        with httpx.stream("POST", gw + "/v1/chat/completions", headers=AUTH,
                          json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}) as s:
            assert s.status_code == 200
            assert "x-gatehouse-cost" not in s.headers  # not known when headers go out
            assert "x-gatehouse-overhead-ms" in s.headers
            body = s.read().decode()
        assert '"usage"' not in body
        metrics = httpx.get(gw + "/metrics").text
    recs = _records(log)
    assert [r["stream"] for r in recs] == [False, True]
    for rec in recs:
        assert rec["cost"] == pytest.approx(want) and rec["cost_estimated"] is False and rec["currency"] == "USD"
        assert rec["response_model"] == "echo"
    line = next(ln for ln in metrics.splitlines() if ln.startswith("gatehouse_cost_total{"))
    assert 'model="m"' in line and 'target="priced"' in line and 'tenant="test"' in line
    assert float(line.split()[-1]) == pytest.approx(2 * want)
    assert f"cost={want:.8f}".rstrip("0") in fmt(recs[0], as_json=False)


def test_cost_estimated_by_tokenizer_when_upstream_reports_no_usage(tmp_path: Path) -> None:
    """An upstream that sends no usage (injected transport): tokens are counted locally, marked estimated."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "up",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "four words of reply"},
                                                      "finish_reason": "stop"}]})

    log = tmp_path / "t.jsonl"
    settings = _settings("http://upstream.invalid", log, cost={"header": True})
    with gateway(settings, transport=httpx.MockTransport(handler)) as (gw, _app):
        r = httpx.post(gw + "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": [{"role": "user", "content": "count these tokens"}]})
        assert r.status_code == 200, r.text
    (rec,) = _records(log)
    meter = Meter(settings, Metrics())
    want = price_of(settings.routes[0].targets[0].price, meter.count("count these tokens"), meter.count("four words of reply"))
    assert rec["cost_estimated"] is True and rec["prompt_tokens"] is None
    assert rec["cost"] == pytest.approx(want) and want > 0
    assert float(r.headers["x-gatehouse-cost"]) == pytest.approx(want)
    assert fmt(rec, as_json=False).count("cost=~") == 1


def test_price_formula_cached_tokens() -> None:
    s = parse_settings({"routes": [{"name": "m", "targets": [{"provider": "mock", "model": "echo", "price": PRICE}]}]})
    p = s.routes[0].targets[0].price
    assert p is not None
    # 1000 prompt of which 400 cached, 100 completion
    assert price_of(p, 1000, 100, 400) == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)
    assert default_tokenizer_path().exists()


def test_failed_request_costs_nothing(fake_upstream: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = fake_upstream
    log = tmp_path / "t.jsonl"
    t = target(url, "error:503", name="down", price=PRICE)
    settings = make_settings([{"name": "m", "targets": [t], "retries": {"attempts": 0}}], traffic_log={"sink": "jsonl", "path": str(log)})
    with gateway(settings) as (gw, _app):
        r = httpx.post(gw + "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502
        assert float(r.headers["x-gatehouse-overhead-ms"]) >= 0
    (rec,) = _records(log)
    assert rec["cost"] is None


def test_one_currency_per_config() -> None:
    eur = {**PRICE, "currency": "EUR"}
    with pytest.raises(ConfigError, match="one currency"):
        parse_settings({"routes": [{"name": "a", "targets": [{"provider": "mock", "model": "echo", "price": PRICE}]},
                                   {"name": "b", "targets": [{"provider": "mock", "model": "echo", "price": eur}]}]})


def test_anthropic_messages_door_is_priced(fake_upstream: tuple[str, Any], tmp_path: Path) -> None:
    """The /v1/messages door (whole and streamed) gets the same cost as chat: usage flows through the core record."""
    url, _ = fake_upstream
    log = tmp_path / "traffic.jsonl"
    with gateway(_settings(url, log, cost={"header": True})) as (gw, _app):
        body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
        r = httpx.post(gw + "/v1/messages", headers={"x-api-key": API_KEY}, json=body)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        want = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1e6
        assert float(r.headers["x-gatehouse-cost"]) == pytest.approx(want)
        with httpx.stream("POST", gw + "/v1/messages", headers={"x-api-key": API_KEY}, json={**body, "stream": True}) as s:
            assert s.status_code == 200
            s.read()
    recs = _records(log)
    assert [(r["endpoint"], r["stream"]) for r in recs] == [("messages", False), ("messages", True)]
    assert all(r["cost"] == pytest.approx(want) and r["cost_estimated"] is False for r in recs)

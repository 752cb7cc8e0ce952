"""Hardening (#17): load sheds, it never disarms; CPU work stays off the event loop.

Findings covered: with 16 clients sending 100-message requests the demo's toxic example
passed 4 of 4 times (`check safety of rule block-toxic-input failed (timeout);
on_error=open`); PII scans of long texts ran on the event loop; nothing measured the loop.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.admission import CheckAdmission
from gateway.errors import GatewayError
from gateway.guardrails import GuardrailMetrics, GuardrailStage
from gateway.loopwatch import LoopLagMonitor
from gateway.metrics import Metrics
from gateway.types import Caller, RequestContext, TrafficRecord
from policies import Engine, PolicySet
from tests.support import API_KEY, gateway, make_settings

DEMO_POLICY = Path(__file__).parents[1] / "policies" / "examples" / "demo.yaml"
TOXIC = "you absolute idiot"


class GatedScorer:
    """A safety model that answers only when the test opens its gate (a busy model)."""

    labels = ("toxicity", "identity_attack")

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
        self.entered.set()
        await self.gate.wait()
        return [{"toxicity": 0.99 if "idiot" in t else 0.01, "identity_attack": 0.0} for t in texts]


def policy(on_error: str, timeout_ms: int = 60_000) -> PolicySet:
    return PolicySet.from_texts([("p.yaml", f"""\
id: p
version: 1
owner: tests
rules:
  - id: block-toxic-input
    direction: input
    checks: [{{type: safety, thresholds: {{toxicity: 0.8}}, timeout_ms: {timeout_ms}, on_error: {on_error}}}]
""")])


def ctx_for(*texts: str) -> RequestContext:
    rec = TrafficRecord(request_id="r", ts_start=0.0, endpoint="chat")
    body = {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}
    return RequestContext("r", "chat", Caller("acme", "k"), body, {}, rec)


def assert_shed(err: GatewayError) -> None:
    assert err.status == 503 and err.headers["retry-after"] == "1"
    body = err.body()["error"]
    assert body["code"] == "overloaded" and {"message", "type", "param", "code"} <= set(body)


async def test_new_requests_are_shed_when_checks_are_at_capacity() -> None:
    scorer = GatedScorer()
    stage = GuardrailStage(Engine(policy("open"), safety=scorer), admission=CheckAdmission(4))
    first = asyncio.create_task(stage.on_request(ctx_for("hello", "there", "friend")))
    await scorer.entered.wait()  # three texts are in the model now
    with pytest.raises(GatewayError) as exc:
        await stage.on_request(ctx_for(TOXIC, "more"))
    assert_shed(exc.value)
    scorer.gate.set()
    await first
    with pytest.raises(GatewayError) as exc:  # admitted now, and checked: blocked, not passed
        await stage.on_request(ctx_for(TOXIC, "more"))
    assert exc.value.status == 400 and exc.value.body()["error"]["code"] == "content_policy_violation"
    assert stage.admission is not None and stage.admission.in_flight == 0


async def test_a_request_larger_than_the_capacity_runs_alone() -> None:
    scorer = GatedScorer()
    scorer.gate.set()
    stage = GuardrailStage(Engine(policy("closed"), safety=scorer), admission=CheckAdmission(2))
    await stage.on_request(ctx_for(*["fine"] * 10))


async def test_a_check_that_times_out_fails_closed_as_a_503() -> None:
    scorer = GatedScorer()  # never answers
    stage = GuardrailStage(Engine(policy("closed", timeout_ms=50), safety=scorer), admission=CheckAdmission(64))
    with pytest.raises(GatewayError) as exc:
        await stage.on_request(ctx_for(TOXIC))
    assert_shed(exc.value)
    assert exc.value.body()["error"]["rule"] == "block-toxic-input"


async def test_the_demo_policy_never_passes_an_unchecked_request() -> None:
    doc = yaml.safe_load(DEMO_POLICY.read_text())
    model_checks = [c for r in doc["rules"] if r.get("action") != "shadow" for c in r["checks"] if c["type"] in ("safety", "recitation")]
    assert model_checks and all(c.get("on_error") == "closed" for c in model_checks)

    class Broken:
        labels = ("toxicity", "identity_attack")

        async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
            raise RuntimeError("model overloaded")

    stage = GuardrailStage(Engine(PolicySet.load([DEMO_POLICY]), safety=Broken()), admission=CheckAdmission(64))
    with pytest.raises(GatewayError) as exc:
        await stage.on_request(ctx_for(TOXIC))
    assert_shed(exc.value)


async def test_every_fail_open_is_counted() -> None:
    metrics = Metrics()
    gm = GuardrailMetrics.register(metrics)
    scorer = GatedScorer()
    stage = GuardrailStage(Engine(policy("open", timeout_ms=50), safety=scorer, observe=gm.observe), metrics=gm)
    ctx = ctx_for(TOXIC, "x")
    await stage.on_request(ctx)  # on_error: open lets both through, unchecked ...
    # ... and says so: in the verdict and in the metric the alert watches
    (v,) = ctx.record.verdicts
    assert (v.category, v.action, v.count) == ("error", "pass", 2)
    value = metrics.registry.get_sample_value("gatehouse_guardrail_fail_open_total", {"rule": "block-toxic-input", "check": "safety"})
    assert value == 2


async def test_long_texts_are_scanned_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from policies import engine as engine_mod

    threads: list[int] = []
    real = engine_mod.find_pii

    def spy(text: str, entities: Any) -> Any:
        threads.append(threading.get_ident())
        return real(text, entities)

    monkeypatch.setattr(engine_mod, "find_pii", spy)
    ps = PolicySet.from_texts([("p.yaml", "id: p\nversion: 1\nowner: t\nrules:\n  - {id: pii, action: redact, checks: [{type: pii, timeout_ms: 60000}]}\n")])
    stage = GuardrailStage(Engine(ps))
    ctx = ctx_for("mail bob@example.com " + "12 34 " * 20_000)
    await stage.on_request(ctx)
    assert threads and threads[0] != threading.get_ident()
    assert ctx.request is not None and ctx.request.messages[0].text.startswith("mail [EMAIL] ")  # what goes upstream


def test_loop_lag_gauge_holds_the_worst_sample_of_its_window() -> None:
    metrics = Metrics()
    gauge = metrics.gauge("event_loop_lag_seconds", "lag", ())
    mon = LoopLagMonitor(gauge, interval=0.1, window=30.0)
    assert mon.observe(100.0, 0.001) == 0.001
    assert mon.observe(121.0, 21.0) == 21.0  # a 21 s stall, seen when the loop wakes
    assert mon.observe(140.0, 0.001) == 21.0  # still visible to the next scrape
    assert mon.observe(152.0, 0.002) == 0.002  # then it leaves the window
    assert metrics.registry.get_sample_value("gatehouse_event_loop_lag_seconds") == 0.002


def test_gateway_exports_loop_lag_and_guardrail_load_metrics() -> None:
    settings = make_settings([{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}],
                             policies={"paths": [str(DEMO_POLICY)]})
    with gateway(settings) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        # safety.backend none: the demo's closed safety rule cannot run, so it refuses
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
        text = httpx.get(url + "/metrics").text
    assert "gatehouse_event_loop_lag_seconds " in text
    assert "gatehouse_guardrail_texts_in_flight " in text

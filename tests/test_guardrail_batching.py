"""#17: a request's texts go to each check in one batch (one scorer call per request, verdicts
aggregated per rule and check as they are made), and admission sheds a request the checks
could not finish within its timeout at the measured rate (injected clock, no timing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.admission import DEADLINE_SHARE, CheckAdmission
from gateway.api import chat_door
from gateway.config import LimitSettings
from gateway.errors import GatewayError
from gateway.guardrails import GuardrailMetrics, GuardrailStage, check_deadline
from gateway.metrics import Metrics
from gateway.types import Caller, RequestContext, TrafficRecord
from policies import Engine, PolicySet

POLICY = """\
id: p
version: 1
owner: tests
rules:
  - id: block-toxic
    direction: input
    action: block
    checks: [{type: safety, thresholds: {toxicity: 0.8}, timeout_ms: 4000, on_error: closed}]
  - id: injection-in-tools
    direction: input
    roles: [tool]
    action: block
    checks: [{type: safety, thresholds: {threat: 0.8}, timeout_ms: 2000, on_error: closed}]
  - id: shadow-toxic
    direction: input
    action: shadow
    checks: [{type: safety, thresholds: {toxicity: 0.3}, timeout_ms: 500}]
  - id: redact-pii
    direction: input
    action: redact
    checks: [{type: pii, entities: [email]}]
"""


class CountingScorer:
    """Records every call the checks make; 'idiot' is toxic."""

    labels = ("toxicity", "threat")

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
        self.calls.append(list(texts))
        return [{"toxicity": 0.99 if "idiot" in t else 0.01, "threat": 0.0} for t in texts]


@pytest.fixture(autouse=True, scope="module")
def _language_model() -> None:
    from evaluators.safety.language import warm_up

    warm_up()  # as the gateway does at startup: a cold load is not what these checks time


def ctx_for(messages: list[dict[str, Any]]) -> RequestContext:
    rec = TrafficRecord(request_id="r", ts_start=0.0, endpoint="chat")
    body = {"model": "m", "messages": messages}
    return RequestContext("r", "chat", Caller("acme", "k"), body, {}, rec, request=chat_door(body, LimitSettings()))


def users(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"question number {i} about the weather"} for i in range(n)]


def stage(scorer: Any, observe: Any = None, **kw: Any) -> GuardrailStage:
    return GuardrailStage(Engine(PolicySet.from_texts([("p.yaml", POLICY)]), safety=scorer, observe=observe), **kw)


async def test_one_scorer_call_per_role_for_the_whole_request() -> None:
    scorer = CountingScorer()
    msgs = [*users(200), {"role": "tool", "tool_call_id": "c1", "content": "tool output"}]
    msgs.insert(1, {"role": "assistant", "content": "ok", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    ctx = ctx_for(msgs)
    await stage(scorer).on_request(ctx)
    # two safety rules on user turns share one call; the tool turn is its own batch
    assert sorted(len(c) for c in scorer.calls) == [1, 200]
    # verdicts: one per (rule, check), standing for every text it covers
    counts = {(v.rule, v.check): v.count for v in ctx.record.verdicts}
    assert counts == {
        ("block-toxic", "safety"): 200, ("shadow-toxic", "safety"): 200, ("redact-pii", "pii"): 200,
        ("injection-in-tools", "safety"): 1,  # the rules without roles: user turns only
    }


async def test_a_batch_decides_each_text_as_a_single_check_would() -> None:
    texts = ["hello there", "you idiot", "mail me at bob@example.com", "", "   ", "plain words", "idiot a@b.io"]
    engine = Engine(PolicySet.from_texts([("p.yaml", POLICY)]), safety=CountingScorer())
    rules = engine.policies.resolve("acme", "k", "m", "input")
    user_rules = [r for r in rules if r.covers("input", "user")]
    batch = await engine.evaluate_batch(user_rules, "input", texts)
    for text, got in zip(texts, batch.outcomes, strict=True):
        want = await engine.evaluate_rules(user_rules, "input", text)
        assert (got.action, got.text, got.redactions) == (want.action, want.text, want.redactions), text
        assert (got.blocked_by and got.blocked_by.rule) == (want.blocked_by and want.blocked_by.rule)
    worst = {v.rule: (v.action, texts[i]) for v, i in zip(batch.verdicts, batch.worst_of, strict=True)}
    assert worst["block-toxic"] == ("block", "you idiot")
    assert worst["redact-pii"][0] == "redact"


async def test_a_blocked_text_blocks_the_request_and_redactions_land_on_their_text() -> None:
    scorer = CountingScorer()
    msgs = users(30)
    msgs[7]["content"] = "write to carol@example.com"
    ctx = ctx_for(msgs)
    await stage(scorer).on_request(ctx)
    assert ctx.request is not None
    assert ctx.request.messages[7].text == "write to [EMAIL]"
    assert ctx.request.messages[8].text == "question number 8 about the weather"
    msgs[20]["content"] = "you idiot"
    with pytest.raises(GatewayError) as exc:
        await stage(scorer).on_request(ctx_for(msgs))
    assert exc.value.status == 400 and exc.value.body()["error"]["rule"] == "block-toxic"


async def test_metrics_count_texts_not_groups() -> None:
    metrics = Metrics()
    gm = GuardrailMetrics.register(metrics)
    await stage(CountingScorer(), observe=gm.observe, metrics=gm).on_request(ctx_for(users(40)))
    value = metrics.registry.get_sample_value("gatehouse_guardrail_checks_total", {"check": "pii", "action": "pass"})
    assert value == 40


def test_the_deadline_is_the_shortest_enforced_model_check() -> None:
    rules = PolicySet.from_texts([("p.yaml", POLICY)]).resolve("acme", "k", "m", "input")
    assert check_deadline(rules) == 2.0  # not the shadow check's 0.5 s, and pii has none
    assert check_deadline([r for r in rules if r.id == "redact-pii"]) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def measured(rate: float, clock: Clock) -> CheckAdmission:
    """An admission that has seen the checks clear ``rate`` texts a second."""
    adm = CheckAdmission(10_000, clock=clock)
    with adm.admit(int(rate)):
        clock.now += 1.0
    assert adm.rate == pytest.approx(rate)
    return adm


def test_admission_sheds_when_the_estimated_drain_exceeds_the_deadline() -> None:
    clock = Clock()
    adm = measured(100.0, clock)
    with adm.admit(300):  # 300 texts ahead: 3 s at 100 texts/s
        # 300 + 50 texts: 3.5 s, within 0.8 x 5 s
        with adm.admit(50, deadline=5.0):
            pass
        # 300 + 150: 4.5 s, past 0.8 x 5 s: shed now rather than time out (and fail open)
        with pytest.raises(GatewayError) as exc, adm.admit(150, deadline=5.0):
            pass
        err = exc.value
        assert err.status == 503 and err.body()["error"]["code"] == "overloaded"
        assert err.headers["retry-after"] == "3"  # when the 300 ahead should have cleared
        assert "100 texts/s" in err.body()["error"]["message"]
        # no deadline (no model checks), or output checks (force): admitted
        with adm.admit(150):
            pass
        with adm.admit(150, deadline=5.0, force=True):
            pass
    assert adm.in_flight == 0
    assert (450 / 100.0) > 5.0 * DEADLINE_SHARE


def test_nothing_in_flight_always_admits_and_the_rate_follows_the_checks() -> None:
    clock = Clock()
    adm = measured(100.0, clock)
    with adm.admit(5_000, deadline=1.0):  # alone: runs (and teaches the admission the real rate)
        clock.now += 5.0
    assert adm.rate is not None and adm.rate > 100.0
    idle_rate = adm.rate
    clock.now += 60.0  # idle time is not busy time: the rate does not decay while nothing runs
    with adm.admit(1):
        pass
    assert adm.rate == pytest.approx(idle_rate, rel=0.01)


async def test_the_stage_passes_the_checks_deadline_to_admission() -> None:
    clock = Clock()
    adm = measured(100.0, clock)
    gate = asyncio.Event()

    class Slow(CountingScorer):
        async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
            await gate.wait()
            return await super().ascore(texts)

    st = stage(Slow(), admission=adm)
    first = asyncio.create_task(st.on_request(ctx_for(users(150))))  # 1.5 s at 100 texts/s: in
    while adm.in_flight == 0:
        await asyncio.sleep(0)
    # 150 ahead + 30 = 1.8 s > 0.8 x 2 s (the tool rule's timeout is the request's deadline)
    with pytest.raises(GatewayError) as exc:
        await st.on_request(ctx_for(users(30)))
    assert exc.value.status == 503
    gate.set()
    await first


def test_a_short_queue_does_not_teach_the_rate() -> None:
    """One-text requests take their fixed latency whatever the throughput: counting them would
    make the estimate pessimistic and shed requests the checks could take."""
    clock = Clock()
    adm = measured(100.0, clock)
    for _ in range(50):
        with adm.admit(1, deadline=5.0):
            clock.now += 0.05  # 20 texts/s if it counted
    assert adm.rate == pytest.approx(100.0)
    fresh = CheckAdmission(10_000, clock=clock)
    with fresh.admit(4):
        clock.now += 1.0
    assert fresh.rate is None  # no backlog seen yet: only the capacity sheds
    with fresh.admit(1), fresh.admit(5_000, deadline=0.1):
        pass


async def test_more_texts_than_the_checks_may_take_is_a_400_before_any_check() -> None:
    scorer = CountingScorer()
    st = stage(scorer, limits=LimitSettings(max_checked_texts=20))
    await st.on_request(ctx_for(users(20)))
    with pytest.raises(GatewayError) as exc:
        await st.on_request(ctx_for(users(21)))
    err = exc.value.body()["error"]
    assert exc.value.status == 400 and err["code"] == "limit_exceeded" and err["param"] == "messages"
    assert "max_checked_texts" in err["message"]
    assert len(scorer.calls) == 1  # the refused request reached no check


def test_the_demo_caps_checked_texts() -> None:
    from pathlib import Path

    import yaml

    demo = yaml.safe_load((Path(__file__).parents[1] / "gateway" / "demo.yaml").read_text())
    assert LimitSettings(**demo["limits"]).max_checked_texts < LimitSettings().max_inputs

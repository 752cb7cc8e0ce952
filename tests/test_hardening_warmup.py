"""Hardening (#17): nothing lazy or chatty on the event loop: no model load at the first request,
no log line per failed check.

Finding (tests/bench/bench_adversarial.py): the first guarded request after start stalled the
demo gateway's event loop for ~1 s while py3langid loaded inside the first safety check.
"""

from __future__ import annotations

import pytest

import evaluators.safety as safety
from evaluators.safety import language
from gatehouse_core.settings import SafetySettings


def test_loading_a_scorer_loads_the_language_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "_build_scorer", lambda *a, **k: object())
    language._langid.cache_clear()
    safety.load_scorer(SafetySettings())
    assert language._langid.cache_info().currsize == 1  # loaded with the scorer, in the caller's thread


def test_no_scorer_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    language._langid.cache_clear()
    assert safety.load_scorer(SafetySettings(backend="none")) is None
    assert language._langid.cache_info().currsize == 0


async def test_a_failing_check_warns_once_a_second_not_once_per_text(caplog: pytest.LogCaptureFixture) -> None:
    """Finding (bench_adversarial.py): a 2,000-input request whose checks timed out logged 4,000
    warnings from the event loop and stalled it ~2 s. Each failure still gets its verdict."""
    from policies import Engine, PolicySet

    class Broken:
        labels = ("toxicity",)

        async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
            raise RuntimeError("model down")

    ps = PolicySet.from_texts([("p.yaml", "id: p\nversion: 1\nowner: t\nrules:\n  - id: tox\n    checks: "
                                          "[{type: safety, thresholds: {toxicity: 0.8}, on_error: closed}]\n")])
    engine = Engine(ps, safety=Broken())
    now = 100.0
    engine.clock = lambda: now
    rules = ps.resolve(None, None, None, "input")
    with caplog.at_level("WARNING", logger="gatehouse.policies"):
        outcomes = [await engine.evaluate_rules(rules, "input", f"text {i}") for i in range(500)]
        now += 1.5
        await engine.evaluate_rules(rules, "input", "one more")
    assert all(o.action == "block" and o.verdicts[0].category == "error" for o in outcomes)
    first, second = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert "RuntimeError: model down" in first and "499 more since the last warning" in second

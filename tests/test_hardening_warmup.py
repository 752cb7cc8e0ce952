"""Hardening (#17): nothing loads lazily on the event loop at the first request.

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

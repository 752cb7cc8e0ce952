"""Evaluate the rules that apply to a piece of text and decide what to enforce.

Every check of every applicable rule runs concurrently under its own timeout;
model-backed checks (safety, recitation) are computed once per text and shared
by all rules that use them. Each check leaves one ``Verdict``. The enforced
action is the most severe one that fired: block > redact > flag > pass; a
``shadow`` check is evaluated and recorded but never enforced. A check that
fails or times out passes with an ``error`` verdict when ``on_error: open``
and blocks when ``on_error: closed``.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluators.pii import find_pii, redact
from gatehouse_core.records import Verdict
from policies.cascade import guard_decision, safety_decision
from policies.guard import GuardTransport
from policies.policy_set import BoundCheck, PolicySet, Rule

log = logging.getLogger("gatehouse.policies")

SEVERITY = {"pass": 0, "flag": 1, "redact": 2, "block": 3}


class SafetyScorer(Protocol):
    # also read: ``name`` and ``languages`` (ISO 639-1 codes it covers; a scorer that
    # does not say is taken as English-only, see policies.cascade)
    async def ascore(self, texts: list[str]) -> list[dict[str, float]]: ...


class RecitationChecker(Protocol):
    # the best-scoring match whatever its score (RecitationMatch | None); rules apply thresholds
    async def abest_match(self, text: str) -> Any: ...


class CheckUnavailable(RuntimeError):
    """The model a check needs is not loaded (e.g. ``safety.backend: none``)."""


Span = tuple[int, int, str]  # start, end, replacement


@dataclass(slots=True)
class Outcome:
    action: str = "pass"  # the enforced action: pass | flag | redact | block
    verdicts: list[Verdict] = field(default_factory=list)
    text: str = ""  # the text to use downstream (redacted when action == "redact")
    blocked_by: Verdict | None = None
    redactions: list[Span] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    def fired(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.action != "pass" or v.category == "error"]


@dataclass(slots=True)
class _Result:
    fired: bool
    category: str
    score: float
    detail: dict[str, Any] | None = None
    spans: list[Span] = field(default_factory=list)
    action: str | None = None  # overrides the check's action (e.g. unscored_language: flag)


class _Shared:
    """Model calls made at most once per evaluated text, shared by every rule."""

    def __init__(self, text: str, direction: str = "input") -> None:
        self.text = text
        self.direction = direction
        self.tasks: dict[str, asyncio.Future[Any]] = {}
        self.memo: dict[str, Any] = {}  # cheap per-text facts (the detected language)

    def get(self, name: str, make: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        task = self.tasks.get(name)
        if task is None:
            task = asyncio.ensure_future(make())
            # a failure is seen by the awaiting checks; don't also warn "never retrieved"
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self.tasks[name] = task
        return task

    def cancel(self) -> None:
        for t in self.tasks.values():
            if not t.done():
                t.cancel()


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)


def _jsonable(v: Any, limit: int = 200) -> Any:
    if isinstance(v, str):
        return v if len(v) <= limit else v[:limit] + "…"
    if isinstance(v, tuple | list):
        return [_jsonable(x, limit) for x in v]
    if isinstance(v, int | float | bool) or v is None:
        return v
    return str(v)[:limit]


class Engine:
    """Runs checks; ``policies`` may be swapped at any time (hot reload)."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        safety: SafetyScorer | None = None,
        recitation: RecitationChecker | None = None,
        guard: GuardTransport | None = None,
        observe: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.policies = policies
        self.safety = safety
        self.recitation = recitation
        self.guard = guard  # the gateway's routes, for llama_guard / moderation tiers
        self.observe = observe
        # (rule, check, failure kind) -> (last logged, failures since): see _warn_failed
        self._failures: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.clock: Callable[[], float] = time.monotonic

    async def evaluate(
        self,
        direction: str,
        text: str,
        tenant: str | None,
        key_id: str | None,
        model: str | None,
        *,
        policy: str | None = None,
    ) -> Outcome:
        rules = self.policies.resolve(tenant, key_id, model, direction, policy=policy)
        return await self.evaluate_rules(rules, direction, text)

    async def evaluate_rules(self, rules: Sequence[Rule], direction: str, text: str) -> Outcome:
        if not rules or not text.strip():
            return Outcome(text=text)
        shared = _Shared(text, direction)
        try:
            results = await asyncio.gather(
                *(self._run(rule, check, direction, shared) for rule in rules for check in rule.checks)
            )
        finally:
            shared.cancel()
        verdicts = [v for v, _ in results]
        outcome = Outcome(verdicts=verdicts, text=text)
        for v in verdicts:
            if v.action in SEVERITY and SEVERITY[v.action] > SEVERITY[outcome.action]:
                outcome.action = v.action
                outcome.blocked_by = v if v.action == "block" else None
        if outcome.action == "redact":
            outcome.redactions = sorted(s for v, spans in results if v.action == "redact" for s in spans)
            outcome.text = redact(text, outcome.redactions)
        return outcome

    async def _run(self, rule: Rule, check: BoundCheck, direction: str, shared: _Shared) -> tuple[Verdict, list[Span]]:
        t0 = time.perf_counter()
        try:
            res = await asyncio.wait_for(self._check(check, shared), check.timeout_s)
        except Exception as exc:  # a broken or slow check: the rule's on_error decides
            reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            if check.action == "shadow":
                action = "shadow"  # never enforced either way; not a fail-open
            elif check.on_error == "open":
                action = "pass"
            else:
                action = "block"
            self._warn_failed(rule.id, check.type, reason, "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__,
                              check.on_error)
            verdict = Verdict(
                rule.id, check.type, "error", 0.0, action, direction,
                latency_ms=(time.perf_counter() - t0) * 1000,
                detail={"error": reason, "on_error": check.on_error},
            )
            self._observe(verdict)
            return verdict, []
        action = "pass"
        if res.fired:
            # a shadow check stays shadow whatever its result asks for
            action = check.action if check.action == "shadow" or res.action is None else res.action
        verdict = Verdict(
            rule.id, check.type, res.category, round(float(res.score), 4), action, direction,
            latency_ms=(time.perf_counter() - t0) * 1000, detail=res.detail,
        )
        self._observe(verdict)
        return verdict, res.spans if res.fired else []

    def _warn_failed(self, rule: str, check: str, reason: str, kind: str, on_error: str, every: float = 1.0) -> None:
        """At most one warning per (rule, check, failure kind) a second. A check fails once per
        text: a 2,000-input request that timed out wrote 4,000 lines from the event loop and
        stalled it ~2 s (tests/bench/bench_adversarial.py). Every failure is still counted
        (gatehouse_guardrail_checks_total{action="error"}, fail-opens in their own metric)."""
        key = (rule, check, kind)
        now = self.clock()
        last, since = self._failures.get(key, (float("-inf"), 0))
        if now - last < every:
            self._failures[key] = (last, since + 1)
            return
        self._failures[key] = (now, 0)
        more = f" ({since} more since the last warning)" if since else ""
        log.warning("check %s of rule %s failed (%s); on_error=%s%s", check, rule, reason, on_error, more)

    def _observe(self, verdict: Verdict) -> None:
        if self.observe is not None:
            try:
                self.observe(verdict)
            except Exception:  # metrics must never break a request
                log.exception("verdict observer failed")

    async def _check(self, check: BoundCheck, shared: _Shared) -> _Result:
        spec = check.spec
        text = shared.text
        if spec.type == "safety":
            scorer = self.safety
            if scorer is None:
                raise CheckUnavailable("no safety scorer is loaded (see `safety.backend` in the gateway config)")
            d = await safety_decision(spec, text, shared.direction, scorer, shared.get, shared.memo, self.guard)
            if d.action == "pass" and d.category == "error":  # the guard failed, escalate.on_error: open
                return _Result(False, d.category, d.score, d.detail)
            return _Result(d.fired, d.category, d.score, d.detail, action=d.action)
        if spec.type in ("llama_guard", "moderation"):
            d = await guard_decision(spec, text, shared.direction, shared.get, self.guard)
            return _Result(d.fired, d.category, d.score, d.detail)
        if spec.type == "recitation":
            index = self.recitation
            if index is None:
                raise CheckUnavailable("no recitation index is loaded (see `recitation.index` in the gateway config)")
            # the best match, shared by every rule; each applies its own threshold (not the index's)
            match = await asyncio.shield(shared.get("recitation", lambda: index.abest_match(text)))
            if match is None:
                return _Result(False, "recitation", 0.0)
            score = float(match.score)
            # offsets and a hash locate the match; the text itself never goes into a verdict
            # (verdicts are logged even when traffic_log.log_bodies is off)
            matched = getattr(match, "matched_span", None)
            detail = {
                "source": _jsonable(getattr(match, "source", None)),
                "score": round(score, 4),
                "source_offsets": [getattr(match, "source_start", 0), getattr(match, "source_end", 0)],
                "query_offsets": [getattr(match, "query_start", 0), getattr(match, "query_end", 0)],
                "matched_sha256": hashlib.sha256(matched.encode()).hexdigest()[:16] if isinstance(matched, str) else None,
                "threshold": spec.threshold,
            }
            return _Result(score >= spec.threshold, "recitation", score, detail)
        if spec.type in ("pii", "regex"):
            scan = _pii if spec.type == "pii" else _regex
            if len(text) <= INLINE_SCAN_CHARS:
                return scan(spec, text)  # microseconds: not worth a thread hop
            # a long text is scanned in a worker thread, so the event loop keeps serving
            return await asyncio.to_thread(scan, spec, text)
        raise CheckUnavailable(f"unknown check type {spec.type!r}")  # pragma: no cover - the schema prevents it


INLINE_SCAN_CHARS = 4096  # longer texts are scanned (pii, regex) in a worker thread


def _pii(spec: Any, text: str) -> _Result:
    found = find_pii(text, spec.entities)
    if not found:
        return _Result(False, "pii", 0.0)
    counts: dict[str, int] = {}
    for s in found:
        counts[s.entity] = counts.get(s.entity, 0) + 1
    spans = [(s.start, s.end, spec.replacement.replace("{entity}", s.entity.upper())) for s in found]
    # entity counts only: the PII itself never goes into a verdict or a log
    return _Result(True, found[0].entity, 1.0, {"entities": counts}, spans)


def _regex(spec: Any, text: str) -> _Result:
    allowed = sorted(
        m.span() for p in spec.allow for m in _compiled(p, spec.ignore_case).finditer(text) if m.end() > m.start()
    )
    # a hit is allowed when an allow span contains it: among the spans starting at or before
    # it, the furthest end must reach its end (a bisect, not a scan of every allow span)
    starts = [a for a, _ in allowed]
    reach = list(itertools.accumulate((b for _, b in allowed), max))
    hits: list[tuple[int, int, str]] = []
    for p in spec.deny:
        for m in _compiled(p, spec.ignore_case).finditer(text):
            if m.end() <= m.start():
                continue
            i = bisect.bisect_right(starts, m.start())
            if not (i and reach[i - 1] >= m.end()):
                hits.append((m.start(), m.end(), p))
    if not hits:
        return _Result(False, "regex", 0.0)
    spans = [(a, b, spec.replacement) for a, b, _ in hits]
    return _Result(True, hits[0][2][:64], 1.0, {"pattern": hits[0][2], "matches": len(hits)}, spans)

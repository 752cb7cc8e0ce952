"""Evaluate the rules that apply to a piece of text and decide what to enforce.

Every check of every applicable rule runs concurrently under its own timeout;
model-backed checks (safety, recitation) are computed once per text and shared
by all rules that use them. Each check leaves one ``Verdict``. The enforced
action is the most severe one that fired: block > redact > flag > pass; a
``shadow`` check is evaluated and recorded but never enforced. A check that
fails or times out passes with an ``error`` verdict when ``on_error: open``
and blocks when ``on_error: closed``.

``evaluate_batch`` checks many texts at once (a request's turns or inputs): each check
runs once for all of them, under one timeout, with one scorer call and one language
detection (in a worker thread) for the whole batch, and its verdicts are aggregated per
(rule, check) as they are made: the worst one stands for the group with a ``count``.
The event loop does linear, cheap work per text and yields every ``YIELD_EVERY`` texts.
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


class _Calls:
    """Model calls started at most once per name, shared by every rule that needs them."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Future[Any]] = {}

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


class _Shared(_Calls):
    """Model calls made at most once per evaluated text, shared by every rule."""

    def __init__(self, text: str, direction: str = "input") -> None:
        super().__init__()
        self.text = text
        self.direction = direction
        self.memo: dict[str, Any] = {}  # cheap per-text facts (the detected language)


@dataclass(slots=True)
class BatchOutcome:
    """What ``evaluate_batch`` decided for a list of texts."""

    outcomes: list[Outcome]  # one per text, in order: action, text (redacted), blocked_by, redactions; no verdicts
    verdicts: list[Verdict]  # one per (rule, check): the worst verdict, ``count`` = the texts it covers
    worst_of: list[int]  # for each verdict, the index of the text it came from

    @property
    def worst(self) -> Outcome:
        """The most severe outcome (the first blocked text, else the first most severe)."""
        best = Outcome()
        for o in self.outcomes:
            if SEVERITY.get(o.action, 0) > SEVERITY.get(best.action, 0):
                best = o
        return best


class _Batch(_Calls):
    """Model calls made at most once per batch of texts, shared by every rule: one scorer call
    for all the texts, one language detection pass, and per-text calls (guards, recitation)
    keyed by the text's index."""

    def __init__(self, texts: list[str], direction: str) -> None:
        super().__init__()
        self.texts = texts
        self.direction = direction


class _InBatch(_Shared):
    """One text of a batch, for the checks that call a model per text: its calls are the batch's."""

    def __init__(self, batch: _Batch, j: int) -> None:
        super().__init__(batch.texts[j], batch.direction)
        self.batch = batch
        self.j = j

    def get(self, name: str, make: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        return self.batch.get(f"{name}#{self.j}", make)


def _done(value: Any) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def _detect_all(texts: list[str]) -> list[str]:
    from evaluators.safety.language import detect

    return [detect(t) for t in texts]


async def _languages(texts: list[str]) -> list[str]:
    """Each text's language: inline for a small batch (tens of microseconds a sentence),
    in one worker-thread call for a large one."""
    if len(texts) <= INLINE_DETECT_TEXTS and sum(map(len, texts)) <= INLINE_SCAN_CHARS:
        return _detect_all(texts)
    return await asyncio.to_thread(_detect_all, texts)


INLINE_DETECT_TEXTS = 16  # more texts than this: language detection in a worker thread
YIELD_EVERY = 128  # texts handled on the event loop between two yields to other tasks
# how bad a verdict is when one stands for a group: the enforced action, a check that
# could not run, then the score (the same order as the guardrail stage's merge)
_RANK = {"pass": 0, "shadow": 1, "flag": 2, "redact": 3, "block": 4}


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

    async def evaluate_batch(self, rules: Sequence[Rule], direction: str, texts: Sequence[str]) -> BatchOutcome:
        """Every check of ``rules`` on every text, one call per check for the whole batch.

        Each text's outcome is decided as ``evaluate_rules`` would (the most severe action,
        the first blocking verdict, the redactions of every redacting check), but verdicts
        are aggregated per (rule, check) while they are made, and metrics are observed per
        group, so the work on the event loop is a short linear pass per check."""
        outcomes = [Outcome(text=t) for t in texts]
        live = [i for i, t in enumerate(texts) if t.strip()]
        if not rules or not live:
            return BatchOutcome(outcomes, [], [])
        batch = _Batch([texts[i] for i in live], direction)
        pairs = [(rule, check) for rule in rules for check in rule.checks]
        try:
            runs = await asyncio.gather(*(self._run_batch(rule, check, direction, batch) for rule, check in pairs))
        finally:
            batch.cancel()
        verdicts: list[Verdict] = []
        worst_of: list[int] = []
        spans: dict[int, list[Span]] = {}
        for (rule, check), (results, latency_ms) in zip(pairs, runs, strict=True):
            worst: tuple[int, bool, float] | None = None
            worst_j = 0
            groups: dict[tuple[str, bool, Any, Any], list[Any]] = {}  # metrics: one observation per group
            for j, (action, res) in enumerate(results):
                i = live[j]
                rank = (_RANK.get(action, 0), res.category == "error", res.score)
                if worst is None or rank > worst:
                    worst, worst_j = rank, j
                o = outcomes[i]
                if action in SEVERITY and SEVERITY[action] > SEVERITY[o.action]:
                    o.action = action
                    o.blocked_by = self._verdict(rule, check, direction, action, res, latency_ms) if action == "block" else None
                if action == "redact" and res.spans:
                    spans.setdefault(i, []).extend(res.spans)
                d = res.detail or {}
                key = (action, res.category == "error", d.get("tier"), d.get("language") if d.get("unscored_language") else None)
                g = groups.get(key)
                if g is None:
                    groups[key] = [j, 1]
                else:
                    g[1] += 1
                if j % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # a long batch leaves the loop to other requests now and then
            action, res = results[worst_j]
            v = self._verdict(rule, check, direction, action, res, latency_ms)
            v.count = len(results)
            verdicts.append(v)
            worst_of.append(live[worst_j])
            for j, n in groups.values():
                a, r = results[j]
                seen = self._verdict(rule, check, direction, a, r, latency_ms)
                seen.count = n
                self._observe(seen)
        for i, found in spans.items():
            o = outcomes[i]
            if o.action == "redact":
                o.redactions = sorted(found)
                o.text = redact(texts[i], o.redactions)
        return BatchOutcome(outcomes, verdicts, worst_of)

    @staticmethod
    def _verdict(rule: Rule, check: BoundCheck, direction: str, action: str, res: _Result, latency_ms: float) -> Verdict:
        return Verdict(rule.id, check.type, res.category, round(float(res.score), 4), action, direction,
                       latency_ms=latency_ms, detail=res.detail)

    async def _run_batch(self, rule: Rule, check: BoundCheck, direction: str, batch: _Batch) -> tuple[list[tuple[str, _Result]], float]:
        """One check on every text of the batch under the check's timeout: (action, result) per text."""
        t0 = time.perf_counter()
        try:
            results = await asyncio.wait_for(self._check_batch(check, batch), check.timeout_s)
        except Exception as exc:  # a broken or slow check: the rule's on_error decides, for every text
            timeout = isinstance(exc, TimeoutError)
            reason = "timeout" if timeout else f"{type(exc).__name__}: {exc}"
            if check.action == "shadow":
                action = "shadow"  # never enforced either way; not a fail-open
            elif check.on_error == "open":
                action = "pass"
            else:
                action = "block"
            self._warn_failed(rule.id, check.type, reason, "timeout" if timeout else type(exc).__name__, check.on_error)
            failed = _Result(False, "error", 0.0, {"error": reason, "on_error": check.on_error})
            return [(action, failed)] * len(batch.texts), (time.perf_counter() - t0) * 1000
        out: list[tuple[str, _Result]] = []
        for res in results:
            action = "pass"
            if res.fired:
                # a shadow check stays shadow whatever its result asks for
                action = check.action if check.action == "shadow" or res.action is None else res.action
            out.append((action, res))
        return out, (time.perf_counter() - t0) * 1000

    async def _check_batch(self, check: BoundCheck, batch: _Batch) -> list[_Result]:
        spec = check.spec
        texts = batch.texts
        if spec.type in ("pii", "regex"):
            scan = _pii if spec.type == "pii" else _regex
            if sum(map(len, texts)) <= INLINE_SCAN_CHARS:
                return [scan(spec, t) for t in texts]  # microseconds: not worth a thread hop
            # many or long texts: one worker-thread call for the batch, so the event loop keeps serving
            return await asyncio.to_thread(lambda: [scan(spec, t) for t in texts])
        if spec.type == "safety":
            scorer = self.safety
            if scorer is None:
                raise CheckUnavailable("no safety scorer is loaded (see `safety.backend` in the gateway config)")
            # one scorer call and one language pass for every text, shared by every rule
            scores = await asyncio.shield(batch.get("safety", lambda: scorer.ascore(list(texts))))
            langs = await asyncio.shield(batch.get("language", lambda: _languages(texts)))

            def decide(j: int) -> Awaitable[Any]:
                def get(name: str, make: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
                    if name == "safety":
                        return _done([scores[j]])
                    return batch.get(f"{name}#{j}", make)  # a guard call: per text

                return safety_decision(spec, texts[j], batch.direction, scorer, get, {"language": langs[j]}, self.guard)

            if spec.escalate is None:  # decided locally: no text waits on anything
                decisions = []
                for j in range(len(texts)):
                    decisions.append(await decide(j))
                    if j % YIELD_EVERY == YIELD_EVERY - 1:
                        await asyncio.sleep(0)
            else:
                decisions = list(await asyncio.gather(*(decide(j) for j in range(len(texts)))))
            out = []
            for d in decisions:
                if d.action == "pass" and d.category == "error":  # the guard failed, escalate.on_error: open
                    out.append(_Result(False, d.category, d.score, d.detail))
                else:
                    out.append(_Result(d.fired, d.category, d.score, d.detail, action=d.action))
            return out
        # per-text calls (guard models, the recitation index): concurrent, shared across rules by index
        return list(await asyncio.gather(*(self._check(check, _InBatch(batch, j)) for j in range(len(texts)))))

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


INLINE_SCAN_CHARS = 4096  # longer texts (or batches) are scanned (pii, regex) in a worker thread


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

"""The inline guardrail stage: policy checks on requests, replies and streams.

Input (``on_request``): every user turn's text (``ctx.request``, any door), prompt
(completions) or input (embeddings) is checked; the texts of one request go to each check
together, in one batch per role (``Engine.evaluate_batch``: one scorer call, verdicts
aggregated per rule and check), and admission first asks whether they can be checked
within the checks' timeout (``gateway.admission``). ``block``
raises 400 ``content_policy_violation`` with the rule and category; ``redact``
rewrites the text (``Message.set_text``) before routing; ``flag``/``shadow`` only
record verdicts.

Output, whole reply (``on_response``): a blocked choice follows the OpenAI
convention for output filtering: HTTP 200, ``finish_reason: "content_filter"``
and empty content (the request was valid and the upstream already ran, so it
is not a client error), plus ``content_filter_results`` on the choice naming
the rule and category, as Azure OpenAI does. Streams end the same way, so a
client handles one signal for both.

Output, streamed (``stream_filter``): a hold-back filter releases text only
after the window containing it has been checked, carrying the tail of the
released text into the next window so a phrase split across windows is still
seen whole. A violation raises ``StreamBlocked``; the handler then ends the
stream with ``finish_reason: content_filter`` and an SSE error naming the rule
(and, for recitation, the source).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.admission import CheckAdmission
from gateway.config import LimitSettings
from gateway.errors import ErrorKind, GatewayError, invalid
from gateway.guard_output import HoldbackFilter, check_reply
from gateway.guard_verdicts import block_message as _block_message
from gateway.guard_verdicts import merge_verdicts as merge_verdicts
from gateway.guard_verdicts import note_role as _note_role
from gateway.guard_verdicts import public_detail as _public_detail
from gateway.limits import check_texts
from gateway.model import Message, Opaque, Reply
from gateway.protocols import chat
from gateway.types import BaseStage, RequestContext, Verdict
from policies.engine import BatchOutcome, Engine, Outcome
from policies.policy_set import PolicySet, Rule
from policies.reload import PolicyWatcher

log = logging.getLogger("gatehouse.guardrails")

POLICY_HEADER = "x-gatehouse-policy"
VERDICTS_HEADER = "x-gatehouse-verdicts"
MAX_VERDICTS_HEADER = 4000  # bytes; proxies commonly reject headers over 8 KiB
CHECK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
HOLDBACK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _NoMetric:
    def labels(self, *a: Any, **k: Any) -> _NoMetric:
        return self

    def inc(self, *a: Any) -> None: ...

    def observe(self, *a: Any) -> None: ...


@dataclass
class GuardrailMetrics:
    checks: Any = field(default_factory=_NoMetric)
    latency: Any = field(default_factory=_NoMetric)
    batch: Any = field(default_factory=_NoMetric)
    reloads: Any = field(default_factory=_NoMetric)
    holdback: Any = field(default_factory=_NoMetric)
    unscored: Any = field(default_factory=_NoMetric)
    tiers: Any = field(default_factory=_NoMetric)
    fail_open: Any = field(default_factory=_NoMetric)
    shed: Any = field(default_factory=_NoMetric)
    in_flight: Any = field(default_factory=_NoMetric)

    @classmethod
    def register(cls, metrics: Any) -> GuardrailMetrics:
        if metrics is None:
            return cls()
        return cls(
            checks=metrics.counter("guardrail_checks_total", "Guardrail check outcomes by check type and action", ("check", "action")),
            latency=metrics.histogram("guardrail_latency_seconds", "Time per guardrail check", ("check",), CHECK_BUCKETS),
            batch=metrics.histogram("guardrail_batch_size", "Texts per safety-model batch", (), BATCH_BUCKETS),
            reloads=metrics.counter("policy_reloads_total", "Policy reloads by result (success, unchanged, error)", ("result",)),
            holdback=metrics.histogram("stream_holdback_seconds", "Time streamed text is held back for checking", (), HOLDBACK_BUCKETS),
            unscored=metrics.counter(
                "guardrail_unscored_language_total",
                "Checked texts in a language the safety scorer does not cover, by direction and detected language",
                ("direction", "language"),
            ),
            tiers=metrics.counter(
                "guardrail_tier_decisions_total",
                "Which tier decided a safety or guard check (local, guard, none = unscored language without a guard)",
                ("check", "tier"),
            ),
            fail_open=metrics.counter("guardrail_fail_open_total", "Checks that could not run and let the text through (on_error: open)", ("rule", "check")),
            shed=metrics.counter("guardrail_shed_total", "Requests refused with 503 because guardrail checks were at capacity", ()),
            in_flight=metrics.gauge("guardrail_texts_in_flight", "Texts in guardrail checks now (admission control)", (), multiprocess_mode="livesum"),
        )

    def observe(self, v: Verdict) -> None:
        """One verdict, standing for ``v.count`` texts (a batch's verdicts come grouped)."""
        n = v.count
        self.checks.labels(v.check, "error" if v.category == "error" else v.action).inc(n)
        self.latency.labels(v.check).observe(v.latency_ms / 1000.0)
        d = v.detail
        if d:
            if d.get("unscored_language"):
                self.unscored.labels(v.direction, str(d.get("language", "und"))).inc(n)
            tier = d.get("tier")
            if tier is not None:
                self.tiers.labels(v.check, str(tier)).inc(n)
        if v.category == "error" and v.action == "pass":
            # the text went on unchecked: every one is counted and alerted on
            self.fail_open.labels(v.rule, v.check).inc(n)


@dataclass(slots=True)
class _RequestState:
    policies: PolicySet
    policy: str | None
    exposed: list[Verdict] = field(default_factory=list)


# ---- where the text lives in a request / reply -------------------------------------------

Setter = Callable[[str], None]
Target = tuple[str, str, Setter]  # role, text, setter
ROLE_OF = {"function": "tool"}  # legacy function results are tool results


def _input_texts(ctx: RequestContext, roles: set[str]) -> tuple[str, list[Target]]:
    """(param name, [(role, text, setter)]) for the request's text in the given roles:
    every turn of those roles and every text part of its content."""
    body = ctx.body
    out: list[Target] = []

    def item_setter(container: Any, key: Any) -> Setter:
        def set_(v: str) -> None:
            container[key] = v

        return set_

    req = ctx.request
    if req is not None:
        for i, msg in enumerate(req.messages):
            role = ROLE_OF.get(msg.role, msg.role)
            if role not in roles:
                continue  # by default only user turns: system prompts are the app's, assistant turns were output
            bad = msg.unreadable()
            if bad is not None:
                raise _unreadable(msg, bad, chat.content_param(i, msg, bad))
            out.extend((role, t, functools.partial(msg.set_text, path)) for path, t in msg.texts())
        return "messages", out
    if "user" not in roles:
        return "prompt", out
    key = "prompt" if ctx.endpoint == "completions" else "input"
    value = body.get(key)
    if isinstance(value, str):
        out.append(("user", value, item_setter(body, key)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                out.append(("user", v, item_setter(value, i)))
    return key, out


def _unreadable(msg: Message, path: tuple[int, ...], where: str) -> GatewayError:
    """The 400 for a part no check can read (the same words as ``part_texts``)."""
    part: Any = msg.parts[path[0]]
    if len(path) > 1:
        part = part.parts[path[1]]
    data = part.data if isinstance(part, Opaque) else part
    if not isinstance(data, dict):
        return invalid(f"'{where}' is {type(data).__name__}, not a content part the gateway can check.", where)
    return invalid(
        f"'{where}' has content part type {data.get('type')!r}, which the gateway cannot read, so it cannot be checked; "
        f"send text as {{\"type\": \"text\", \"text\": ...}}.",
        f"{where}.type",
    )


def _compact(verdicts: list[Verdict]) -> str:
    """The verdict header, built once: items are serialised one by one and the list stops
    (with a ``truncated`` marker) before it would pass ``MAX_VERDICTS_HEADER`` bytes."""
    parts: list[str] = []
    size = 2  # the brackets
    marker = json.dumps({"truncated": True}, separators=(",", ":"))
    for v in verdicts:
        item: dict[str, Any] = {"r": v.rule, "c": v.check, "cat": v.category, "a": v.action, "s": v.score, "d": v.direction[0]}
        if v.count > 1:
            item["n"] = v.count
        raw = json.dumps(item, separators=(",", ":"))
        if size + len(raw) + 1 + len(marker) + 1 > MAX_VERDICTS_HEADER:
            parts.append(marker)
            break
        parts.append(raw)
        size += len(raw) + 1
    return "[" + ",".join(parts) + "]"


def check_deadline(rules: list[Rule]) -> float | None:
    """The time a request's input checks have: the shortest timeout of the enforced model-backed
    checks it meets (pattern checks take microseconds; a shadow check's failure changes nothing)."""
    return min(
        (c.timeout_s for r in rules for c in r.checks if c.type not in ("pii", "regex") and c.action != "shadow"),
        default=None,
    )


def _worst(outcomes: list[Outcome]) -> Outcome:
    from policies.engine import SEVERITY

    best = Outcome()
    for o in outcomes:
        if SEVERITY.get(o.action, 0) > SEVERITY.get(best.action, 0):
            best = o
    return best


# ---- the stage ---------------------------------------------------------------------------

class GuardrailStage(BaseStage):
    name = "guardrails"
    runs_on_short_circuit = True  # input checks apply to cache hits too

    def __init__(
        self,
        engine: Engine,
        *,
        metrics: GuardrailMetrics | None = None,
        default_policy: str | None = None,
        watcher: PolicyWatcher | None = None,
        model_loader: Callable[[PolicySet], Any] | None = None,
        admission: CheckAdmission | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.metrics = metrics or GuardrailMetrics()
        self.admission = admission
        self.default_policy = default_policy
        self.watcher = watcher
        self._model_loader = model_loader

    @property
    def policies(self) -> PolicySet:
        return self.engine.policies

    @property
    def policy_version(self) -> str:
        """The live policy version; the app hands it to earlier stages (the cache key)."""
        return self.engine.policies.version

    async def set_policies(self, policies: PolicySet) -> None:
        """Swap the live policies (hot reload); loads models a new check type needs first."""
        if self._model_loader is not None:
            res = self._model_loader(policies)
            if inspect.isawaitable(res):
                await res
        self.engine.policies = policies

    def on_sighup(self) -> None:
        """For the app's SIGHUP handler: reload policy files now."""
        if self.watcher is not None:
            self.watcher.request_reload("sighup")

    async def aclose(self) -> None:
        if self.watcher is not None:
            await self.watcher.aclose()
        for model in (self.engine.safety, self.engine.recitation):
            closer = getattr(model, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing %r failed", model)

    # -- helpers -----------------------------------------------------------

    @property
    def _retry_after(self) -> int:
        return self.admission.retry_after if self.admission is not None else 1

    @contextlib.asynccontextmanager
    async def _admitted(
        self, texts: int, ctx: RequestContext, force: bool = False, deadline: float | None = None
    ) -> AsyncIterator[None]:
        if self.admission is None:
            yield
            return
        with self.admission.admit(texts, force=force, deadline=deadline, headers=dict(ctx.response_headers)):
            yield

    def _state(self, ctx: RequestContext) -> _RequestState:
        st = ctx.state.get(self.name)
        if st is None:
            # one snapshot per request: a reload mid-request doesn't mix versions
            ps = self.engine.policies
            policy = ctx.caller.policy or self.default_policy
            if policy is not None and not ps.has_policy(policy):
                raise GatewayError(
                    ErrorKind.UNAVAILABLE,
                    f"policy '{policy}' assigned to this key is not loaded; refusing to run unguarded.",
                    headers={POLICY_HEADER: ps.version},
                )
            st = ctx.state[self.name] = _RequestState(ps, policy)
            ctx.record.policy_version = ps.version
            ctx.response_headers[POLICY_HEADER] = ps.version
        return st

    def _rules(self, ctx: RequestContext, st: _RequestState, direction: str) -> list[Rule]:
        c = ctx.caller
        return st.policies.resolve(c.tenant, c.key_id, ctx.model, direction, policy=st.policy)

    def _record(self, ctx: RequestContext, st: _RequestState, rules: list[Rule], verdicts: list[Verdict]) -> None:
        merge_verdicts(ctx.record.verdicts, verdicts)
        exposing = {r.id for r in rules if r.expose_verdicts}
        if not exposing:
            return
        merge_verdicts(st.exposed, [v for v in verdicts if v.rule in exposing])
        if st.exposed:
            ctx.response_headers[VERDICTS_HEADER] = _compact(st.exposed)

    # -- Stage hooks ---------------------------------------------------------

    async def _evaluate(self, rules: list[Rule], direction: str, role: str, text: str) -> Outcome:
        """The rules that look at ``role`` on this side, on one text; verdicts note non-default roles."""
        scoped = [r for r in rules if r.covers(direction, role)]
        outcome = await self.engine.evaluate_rules(scoped, direction, text)
        if role not in ("user", "assistant"):
            _note_role(outcome.verdicts, role)
        return outcome

    async def _evaluate_all(
        self, rules: list[Rule], direction: str, items: list[tuple[str, str]]
    ) -> tuple[list[Outcome], list[Verdict], list[int]]:
        """Every (role, text) checked by the rules that look at its role: one batch per role,
        each check called once per batch. Returns the outcome per item (in order), the
        verdicts aggregated per (rule, check) and role, and for each verdict the item it came from."""
        by_role: dict[str, list[int]] = {}
        for i, (role, _) in enumerate(items):
            by_role.setdefault(role, []).append(i)

        async def one(role: str, idx: list[int]) -> BatchOutcome:
            scoped = [r for r in rules if r.covers(direction, role)]
            return await self.engine.evaluate_batch(scoped, direction, [items[i][1] for i in idx])

        groups = list(by_role.items())
        batches = await asyncio.gather(*(one(role, idx) for role, idx in groups))
        outcomes: list[Outcome] = [Outcome()] * len(items)
        verdicts: list[Verdict] = []
        worst_of: list[int] = []
        for (role, idx), b in zip(groups, batches, strict=True):
            for i, o in zip(idx, b.outcomes, strict=True):
                outcomes[i] = o
            if role not in ("user", "assistant"):
                _note_role(b.verdicts, role)
            verdicts.extend(b.verdicts)
            worst_of.extend(idx[j] for j in b.worst_of)
        return outcomes, verdicts, worst_of

    async def on_request(self, ctx: RequestContext) -> None:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "input")
        if not rules:
            return
        param, targets = _input_texts(ctx, {role for r in rules for role in r.roles_for("input")})
        if not targets:
            return
        if self.limits is not None:
            check_texts(len(targets), self.limits, param)
        async with self._admitted(len(targets), ctx, deadline=check_deadline(rules)):
            outcomes, verdicts, _ = await self._evaluate_all(rules, "input", [(role, t) for role, t, _ in targets])
        self._record(ctx, st, rules, verdicts)
        worst = _worst(outcomes)
        if worst.blocked and worst.blocked_by is not None:
            v = worst.blocked_by
            if v.category == "error":
                # the check could not run (slow or broken model) and the rule fails closed:
                # that is the gateway's load, not the caller's content, so shed with a 503
                raise GatewayError(
                    ErrorKind.OVERLOADED,
                    _block_message(v, "The request was") + " Retry later.",
                    headers={**ctx.response_headers, "retry-after": str(self._retry_after)},
                    extra={"rule": v.rule, "category": v.category},
                )
            raise GatewayError(
                ErrorKind.CONTENT_POLICY,
                _block_message(v, "The request was"),
                param=param,
                headers=dict(ctx.response_headers),
                extra={"rule": v.rule, "category": v.category, **_public_detail(v)},
            )
        for (_, _, set_text), o in zip(targets, outcomes, strict=True):
            if o.action == "redact":
                set_text(o.text)

    async def check_passages(self, ctx: RequestContext, passages: list[str]) -> list[str | None]:
        """Grounding asks before it injects retrieved passages: rules scoped to the
        `grounding` role run on them (one batch); a blocked passage is dropped (None), a
        redacted one rewritten; the request itself goes on."""
        st = self._state(ctx)
        rules = [r for r in self._rules(ctx, st, "input") if r.covers("input", "grounding")]
        if not rules or not passages:
            return list(passages)
        outcomes, verdicts, worst_of = await self._evaluate_all(rules, "input", [("grounding", p) for p in passages])
        for v, i in zip(verdicts, worst_of, strict=True):
            v.detail = {**(v.detail or {}), "passage": i + 1}  # the passage the group's worst verdict is about
        self._record(ctx, st, rules, verdicts)
        return [None if o.blocked else o.text for o in outcomes]

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "output")
        if not rules:
            return reply
        return await check_reply(self, ctx, rules, reply, functools.partial(self._record, ctx, st, rules))

    def stream_filter(self, ctx: RequestContext) -> HoldbackFilter | None:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "output")
        if not rules:
            return None
        return HoldbackFilter(self, ctx, st, rules)


# ---- factory -----------------------------------------------------------------------------

async def build_stage(services: Any) -> GuardrailStage | None:
    """The guardrail stage, or None when no policy paths are configured."""
    settings = services.settings
    cfg = settings.policies
    if not cfg.paths:
        return None
    paths = [Path(settings.resolve_path(p)) for p in cfg.paths]
    policies = await asyncio.to_thread(PolicySet.load, paths)  # a broken policy stops startup
    metrics = GuardrailMetrics.register(getattr(services, "metrics", None))
    _check_guard_routes(policies, settings)  # a guard tier naming no route would fail every request
    engine = Engine(PolicySet.empty(), guard=getattr(services, "guard", None), observe=metrics.observe)
    loader = _ModelLoader(services, engine, metrics)
    lim = settings.limits
    admission = CheckAdmission(lim.guardrail_capacity, lim.retry_after_seconds, gauge=metrics.in_flight, shed=metrics.shed)
    stage = GuardrailStage(
        engine, metrics=metrics, default_policy=cfg.default_policy, model_loader=loader, admission=admission, limits=lim
    )
    await stage.set_policies(policies)
    services.passage_check = stage.check_passages  # grounding checks passages before injecting them
    if cfg.default_policy and not policies.has_policy(cfg.default_policy):
        log.warning("policies.default_policy %r is not defined in %s", cfg.default_policy, cfg.paths)
    if cfg.reload:
        redis = getattr(services, "redis", None)
        prefix = settings.redis.key_prefix
        stage.watcher = PolicyWatcher(
            paths,
            current=policies,
            on_change=stage.set_policies,
            on_result=lambda result: metrics.reloads.labels(result).inc(),
            poll_seconds=cfg.poll_seconds,
            redis=redis,
            channel=f"{prefix}policies:reload",
        )
        await stage.watcher.start()
    log.info("guardrails: %d rules, policy version %s", len(policies.rules), policies.version)
    return stage


def _check_guard_routes(policies: PolicySet, settings: Any) -> None:
    missing = sorted(policies.guard_routes() - {r.name for r in settings.routes})
    if missing:
        raise ValueError(
            f"policies ask guard models on route(s) {', '.join(missing)} that the gateway config does not define; "
            f"add them under routes: (configured: {', '.join(sorted(r.name for r in settings.routes)) or 'none'})"
        )


def _warn_unscored(policies: PolicySet, scorer: Any) -> None:
    """Say which thresholds can never fire: the scorer does not produce their category
    (``gatehouse policy check`` refuses them; see policies.coverage)."""
    from policies.coverage import uncovered

    produced: Any = getattr(scorer, "categories", None) or getattr(scorer, "labels", ())
    categories = frozenset(str(c) for c in produced)
    for problem in uncovered(policies, (getattr(scorer, "name", "?"), categories)):
        log.warning("%s", problem)


class _ModelLoader:
    """Load the safety scorer / recitation index the first time a policy needs them."""

    def __init__(self, services: Any, engine: Engine, metrics: GuardrailMetrics) -> None:
        self.services = services
        self.engine = engine
        self.metrics = metrics
        self.started = False

    async def __call__(self, policies: PolicySet) -> None:
        settings = self.services.settings
        if policies.needs("safety") and self.engine.safety is None:
            if settings.safety.backend == "none":
                log.warning("policies use `safety` checks but safety.backend is none: they follow on_error")
            else:
                try:
                    self.engine.safety = await asyncio.to_thread(self._load_safety)
                except Exception:
                    if not self.started:
                        raise  # a scorer that cannot load (e.g. a missing artifact) stops startup
                    # on a later policy reload, degrade loudly rather than stop a serving
                    # gateway: each safety check then follows its on_error (closed rules
                    # block, open rules pass with an `error` verdict counted in
                    # guardrail_checks_total{action="error"})
                    log.exception("could not load the safety scorer (safety.backend=%s)", settings.safety.backend)
        if policies.needs("safety") and self.engine.safety is not None:
            _warn_unscored(policies, self.engine.safety)  # on every (re)load of the policies
        if policies.needs("recitation") and self.engine.recitation is None:
            if not settings.recitation.index:
                log.warning("policies use `recitation` checks but recitation.index is unset: they follow on_error")
            else:
                from evaluators.recitation import RecitationIndex

                path = settings.resolve_path(settings.recitation.index)
                try:
                    self.engine.recitation = await asyncio.to_thread(RecitationIndex.load, path)
                except Exception:
                    log.exception("could not load the recitation index %s", path)
        self.started = True

    def _load_safety(self) -> Any:
        from evaluators.safety import load_scorer

        settings = self.services.settings
        embedder = None
        if settings.safety.backend in ("categories", "minilm-head") and hasattr(self.services, "embedder"):
            embedder = self.services.embedder()
        return load_scorer(settings.safety, settings.base_dir, embedder, on_batch=self.metrics.batch.observe)

"""The inline guardrail stage: policy checks on requests, replies and streams.

Input (``on_request``): every user turn's text (``ctx.request``, any door), prompt
(completions) or input (embeddings) is checked separately and concurrently. ``block``
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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evaluators.pii import redact
from gateway.admission import CheckAdmission
from gateway.errors import ErrorKind, GatewayError, invalid
from gateway.model import Message, Opaque
from gateway.protocols import chat
from gateway.types import BaseStage, RequestContext, StreamBlocked, Verdict
from policies.engine import Engine, Outcome
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
        self.checks.labels(v.check, "error" if v.category == "error" else v.action).inc()
        self.latency.labels(v.check).observe(v.latency_ms / 1000.0)
        d = v.detail
        if d:
            if d.get("unscored_language"):
                self.unscored.labels(v.direction, str(d.get("language", "und"))).inc()
            tier = d.get("tier")
            if tier is not None:
                self.tiers.labels(v.check, str(tier)).inc()
        if v.category == "error" and v.action == "pass":
            # the text went on unchecked: every one is counted and alerted on
            self.fail_open.labels(v.rule, v.check).inc()


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


# content parts that carry no text for a check to read (the model gets them as they are)
NON_TEXT_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file"})


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


def part_texts(parts: list[Any], param: str) -> list[tuple[str, Setter]]:
    """Every text in a content-part list, each with a setter for redaction.

    Any part that carries a string ``text`` is text, whatever its type says (``text``,
    ``input_text``, ``output_text``, ``Text``, no type, a type we have never seen);
    ``refusal`` parts carry ``refusal``; ``tool_result`` parts carry ``content`` (a string
    or more parts). Images, audio and files carry no text. Anything else cannot be read
    by the checks and is refused with a 400 naming it, never passed on unchecked.
    """
    out: list[tuple[str, Setter]] = []
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if isinstance(part, str):
            out.append((part, functools.partial(parts.__setitem__, j)))
            continue
        if not isinstance(part, dict):
            raise invalid(f"'{where}' is {type(part).__name__}, not a content part the gateway can check.", where)
        kind = part.get("type")
        if isinstance(part.get("text"), str):
            out.append((part["text"], functools.partial(part.__setitem__, "text")))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append((part["refusal"], functools.partial(part.__setitem__, "refusal")))
        elif kind == "tool_result" and isinstance(part.get("content"), str):
            out.append((part["content"], functools.partial(part.__setitem__, "content")))
        elif kind == "tool_result" and isinstance(part.get("content"), list):
            out.extend(part_texts(part["content"], f"{where}.content"))
        elif kind not in NON_TEXT_PARTS:
            raise invalid(
                f"'{where}' has content part type {kind!r}, which the gateway cannot read, so it cannot be checked; "
                f"send text as {{\"type\": \"text\", \"text\": ...}}.",
                f"{where}.type",
            )
    return out


def _tool_calls(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """The function objects of a whole reply's tool calls (their ``arguments`` are text)."""
    msg = choice.get("message")
    calls = msg.get("tool_calls") if isinstance(msg, dict) else None
    out = []
    for c in calls if isinstance(calls, list) else ():
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            out.append(fn)
    return out


def _chunk_tool_args(chunk: dict[str, Any]) -> str:
    """The tool-call argument text a streamed chunk carries (``delta.tool_calls[].function.arguments``)."""
    out = []
    for c in chunk.get("choices") or ():
        delta = c.get("delta") if isinstance(c, dict) else None
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                out.append(fn["arguments"])
    return "".join(out)


def _note_role(verdicts: list[Verdict], role: str) -> None:
    for v in verdicts:
        v.detail = {**(v.detail or {}), "role": role}


def _choice_text(choice: dict[str, Any]) -> str | None:
    msg = choice.get("message")
    if isinstance(msg, dict):
        c = msg.get("content")
        return c if isinstance(c, str) else None
    t = choice.get("text")
    return t if isinstance(t, str) else None


def _withhold(choice: dict[str, Any]) -> None:
    """A reply part the checks cannot read is not released: the choice ends as filtered."""
    _set_choice_text(choice, "")
    choice["finish_reason"] = "content_filter"
    choice["content_filter_results"] = {"unreadable": {"filtered": True}}


def _set_choice_text(choice: dict[str, Any], text: str) -> None:
    if isinstance(choice.get("message"), dict):
        choice["message"]["content"] = text
    else:
        choice["text"] = text


def _set_chunk_text(chunk: dict[str, Any], text: str) -> None:
    for c in chunk.get("choices") or []:
        delta = c.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            delta["content"] = text
            text = ""
        elif isinstance(c.get("text"), str):
            c["text"] = text
            text = ""


def _public_detail(v: Verdict) -> dict[str, Any]:
    """What a client may see about a verdict: never the matched text itself."""
    d = v.detail or {}
    out: dict[str, Any] = {}
    if "source" in d:
        out["source"] = d["source"]
    if v.check == "pii" and "entities" in d:
        out["entities"] = d["entities"]
    return out


# how bad a verdict is, for keeping the worst of a (rule, check, direction) group:
# the enforced action first, then a check that could not run, then the score
_RANK = {"pass": 0, "shadow": 1, "flag": 2, "redact": 3, "block": 4}


def _rank(v: Verdict) -> tuple[int, bool, float]:
    return _RANK.get(v.action, 0), v.category == "error", v.score


def merge_verdicts(into: list[Verdict], new: list[Verdict]) -> None:
    """Aggregate ``new`` into ``into`` per (rule, check, direction): the worst verdict
    stands for its group and ``count`` says how many texts it covers. Linear in ``new``;
    ``into`` stays as long as the policy has checks, whatever the size of the request."""
    index = {(v.rule, v.check, v.direction): i for i, v in enumerate(into)}
    for v in new:
        key = (v.rule, v.check, v.direction)
        i = index.get(key)
        if i is None:
            index[key] = len(into)
            into.append(replace(v))  # a copy: the caller's verdicts are left as they were
            continue
        old = into[i]
        worst = v if _rank(v) > _rank(old) else old
        into[i] = replace(worst, count=old.count + v.count, latency_ms=max(old.latency_ms, v.latency_ms))


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


def _block_message(v: Verdict, where: str) -> str:
    msg = f"{where} blocked by policy rule '{v.rule}' ({v.check}: {v.category})"
    if v.category == "error":
        msg += "; the check could not run and the rule fails closed"
    source = (v.detail or {}).get("source")
    if source:
        msg += f"; it recites '{source}'"
    return msg + "."


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
    ) -> None:
        self.engine = engine
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
    async def _admitted(self, texts: int, ctx: RequestContext, force: bool = False) -> AsyncIterator[None]:
        if self.admission is None:
            yield
            return
        with self.admission.admit(texts, force=force, headers=dict(ctx.response_headers)):
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

    async def on_request(self, ctx: RequestContext) -> None:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "input")
        if not rules:
            return
        param, targets = _input_texts(ctx, {role for r in rules for role in r.roles_for("input")})
        if not targets:
            return
        async with self._admitted(len(targets), ctx):
            outcomes = await asyncio.gather(*(self._evaluate(rules, "input", role, t) for role, t, _ in targets))
        self._record(ctx, st, rules, [v for o in outcomes for v in o.verdicts])
        worst = _worst(list(outcomes))
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
        `grounding` role run on each; a blocked passage is dropped (None), a redacted
        one rewritten; the request itself goes on."""
        st = self._state(ctx)
        rules = [r for r in self._rules(ctx, st, "input") if r.covers("input", "grounding")]
        if not rules or not passages:
            return list(passages)
        outcomes = await asyncio.gather(*(self._evaluate(rules, "input", "grounding", p) for p in passages))
        for n, o in enumerate(outcomes, 1):
            for v in o.verdicts:
                assert v.detail is not None
                v.detail["passage"] = n
        self._record(ctx, st, rules, [v for o in outcomes for v in o.verdicts])
        return [None if o.blocked else o.text for o in outcomes]

    async def on_response(self, ctx: RequestContext, response: dict[str, Any]) -> dict[str, Any]:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "output")
        choices = response.get("choices")
        if not rules or not isinstance(choices, list):
            return response
        # per choice: its text (assistant) and each tool call's arguments (tool_call)
        targets: list[tuple[dict[str, Any], str, str, Setter]] = []
        for c in choices:
            if not isinstance(c, dict):
                continue
            if t := _choice_text(c):
                targets.append((c, "assistant", t, functools.partial(_set_choice_text, c)))
            msg = c.get("message")
            if isinstance(msg, dict) and isinstance(msg.get("content"), list):  # a reply in content parts
                try:
                    targets.extend((c, "assistant", t, set_) for t, set_ in part_texts(msg["content"], "content") if t)
                except GatewayError:  # a part we cannot read: the reply is not released unchecked
                    _withhold(c)
            for fn in _tool_calls(c):
                if fn["arguments"]:
                    targets.append((c, "tool_call", fn["arguments"], functools.partial(fn.__setitem__, "arguments")))
        if not targets:
            return response
        async with self._admitted(len(targets), ctx, force=True):
            outcomes = await asyncio.gather(*(self._evaluate(rules, "output", role, t) for _, role, t, _ in targets))
        self._record(ctx, st, rules, [v for o in outcomes for v in o.verdicts])
        worst: dict[int, Outcome] = {}
        for (choice, _, _, set_text), o in zip(targets, outcomes, strict=True):
            if o.action == "redact" and not o.blocked:
                set_text(o.text)
            if o.blocked and id(choice) not in worst:
                worst[id(choice)] = o
        for choice in choices:
            found = worst.get(id(choice)) if isinstance(choice, dict) else None
            if found is None:
                continue
            o = found
            if o.blocked and o.blocked_by is not None:
                v = o.blocked_by
                _set_choice_text(choice, "")
                choice["finish_reason"] = "content_filter"
                choice["content_filter_results"] = {
                    v.category: {"filtered": True, "rule": v.rule, "check": v.check, **_public_detail(v)}
                }
                msg = choice.get("message")
                if isinstance(msg, dict) and msg.get("tool_calls"):
                    msg["tool_calls"] = None
        return response

    def stream_filter(self, ctx: RequestContext) -> HoldbackFilter | None:
        st = self._state(ctx)
        rules = self._rules(ctx, st, "output")
        if not rules:
            return None
        return HoldbackFilter(self, ctx, st, rules)


class HoldbackFilter:
    """Release streamed text only after the window containing it passed the checks.

    Text is held until ``holdback_chars`` of new text are pending; then the
    window (``context_chars`` of already released text + the new text) is
    checked and, if it passes, the pending chunks are released in order.
    Chunks without text queue behind pending text so order is kept.
    With several rules the smallest hold-back and the largest context win.
    Tool-call arguments (``delta.tool_calls[].function.arguments``) are held and
    checked the same way, in their own window, by the rules scoped to ``tool_call``;
    a ``redact`` there ends the stream (argument fragments are JSON being built).
    """

    def __init__(self, stage: GuardrailStage, ctx: RequestContext, st: _RequestState, rules: list[Rule]) -> None:
        self.stage = stage
        self.ctx = ctx
        self.st = st
        self.rules = rules
        self.holdback = min(r.stream.holdback_chars for r in rules)
        self.context_chars = max(r.stream.context_chars for r in rules)
        self.text_rules = [r for r in rules if r.covers("output", "assistant")]
        self.call_rules = [r for r in rules if r.covers("output", "tool_call")]
        self.pending: list[tuple[dict[str, Any], str, str, float]] = []  # chunk, text, tool-call args, t
        self.pending_chars = 0
        self.context = ""
        self.call_context = ""
        self.offset = 0  # characters of the reply already released
        self._seen: set[tuple[str, str, str, str]] = set()

    async def feed(self, chunk: dict[str, Any], text: str) -> list[dict[str, Any]]:
        args = _chunk_tool_args(chunk) if self.call_rules else ""
        self.pending.append((chunk, text, args, time.perf_counter()))
        self.pending_chars += len(text) + len(args)
        if self.pending_chars == 0 or self.pending_chars >= self.holdback:
            return await self._flush()
        return []

    async def finish(self) -> list[dict[str, Any]]:
        return await self._flush()

    def _blocked(self, outcome: Outcome) -> None:
        if outcome.blocked and outcome.blocked_by is not None:
            v = outcome.blocked_by
            self.pending.clear()
            self.pending_chars = 0
            raise StreamBlocked(_block_message(v, "The reply was"), rule=v.rule, category=v.category, detail=_public_detail(v))

    async def _flush(self) -> list[dict[str, Any]]:
        new = "".join(t for _, t, _, _ in self.pending)
        new_args = "".join(a for _, _, a, _ in self.pending)
        window = self.context + new
        call_window = self.call_context + new_args
        text_check = self.stage.engine.evaluate_rules(self.text_rules, "output", window) if new and self.text_rules else None
        call_check = self.stage.engine.evaluate_rules(self.call_rules, "output", call_window) if new_args else None
        if text_check is not None or call_check is not None:
            async with self.stage._admitted(1, self.ctx, force=True):
                outcome, call_outcome = await asyncio.gather(_maybe(text_check), _maybe(call_check))
            if call_outcome is not None:
                _note_role(call_outcome.verdicts, "tool_call")
                self._record(call_outcome, len(call_window), len(self.call_context))
                if call_outcome.action == "redact":
                    call_outcome.action = "block"
                    call_outcome.blocked_by = next(v for v in call_outcome.verdicts if v.action == "redact")
                self._blocked(call_outcome)
                self.call_context = call_window[-self.context_chars :] if self.context_chars else ""
            if outcome is not None:
                self._record(outcome, len(window), len(self.context))
                self._blocked(outcome)
                if outcome.action == "redact":
                    self._redact_pending(outcome, len(self.context))
        if new:
            self.context = window[-self.context_chars :] if self.context_chars else ""
            self.offset += len(new)
        now = time.perf_counter()
        released = []
        for chunk, text, _, t in self.pending:
            if text:
                self.stage.metrics.holdback.observe(now - t)
            released.append(chunk)
        self.pending.clear()
        self.pending_chars = 0
        return released

    def _record(self, outcome: Outcome, window_len: int, context_len: int) -> None:
        # windows overlap (the carried context), so a verdict is recorded once per stream
        fresh = []
        for v in outcome.fired():
            key = (v.rule, v.check, v.category, v.action)
            if key in self._seen:
                continue
            self._seen.add(key)
            start = self.offset - context_len
            v.detail = {**(v.detail or {}), "window": [start, start + window_len]}
            fresh.append(v)
        if fresh:
            merge_verdicts(self.ctx.record.verdicts, fresh)

    def _redact_pending(self, outcome: Outcome, context_len: int) -> None:
        """Rewrite the pending chunks; spans in already released context can't be taken back."""
        new = "".join(t for _, t, _, _ in self.pending)
        spans = [
            (max(a - context_len, 0), b - context_len, repl)
            for a, b, repl in outcome.redactions
            if b > context_len
        ]
        redacted = redact(new, spans)
        first = True
        for chunk, text, _, _ in self.pending:
            if not text:
                continue
            _set_chunk_text(chunk, redacted if first else "")
            first = False


async def _maybe(check: Any) -> Outcome | None:
    return None if check is None else await check


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
    stage = GuardrailStage(engine, metrics=metrics, default_policy=cfg.default_policy, model_loader=loader, admission=admission)
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

"""The guardrail stage's output side: checks on a whole reply and the streaming hold-back.

Whole reply (``check_reply``, the stage's ``on_response``): a blocked choice follows the
OpenAI convention for output filtering: HTTP 200, ``finish_reason: "content_filter"`` and
empty content, plus ``content_filter_results`` on the choice naming the rule and category.

Streamed (``HoldbackFilter``, the stage's ``stream_filter``): text is released only after
the window containing it has been checked; a violation raises ``StreamBlocked`` and the
handler ends the stream the same way.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evaluators.pii import redact
from gateway.guard_verdicts import block_message, merge_verdicts, note_role, public_detail
from gateway.model import Choice, Chunk, Message, Reply, Text, ToolCall
from gateway.types import RequestContext, StreamBlocked, Verdict
from policies.engine import Outcome
from policies.policy_set import Rule

if TYPE_CHECKING:
    from gateway.guardrails import GuardrailStage, _RequestState

Setter = Callable[[str], None]


def _withhold(choice: Choice, results: dict[str, Any]) -> None:
    """End a choice as filtered: no text, ``finish_reason: content_filter`` and why."""
    m = choice.message
    m.replace([Text(""), *m.tool_calls])
    m.plain = True
    choice.finish_reason = "content_filter"
    choice.filter_results = results


def _set_arguments(m: Message, call: ToolCall, text: str) -> None:
    call.arguments = text
    m.raw = None


async def check_reply(
    stage: GuardrailStage, ctx: RequestContext, rules: list[Rule], reply: Reply, record: Callable[[list[Verdict]], None]
) -> Reply:
    """The output rules on a whole reply: each choice's text and tool-call arguments are
    checked; a redaction rewrites them, a block empties the choice and ends it with
    ``finish_reason: content_filter``. ``record`` puts the verdicts on the record."""
    # per choice: its texts (assistant) and each tool call's arguments (tool_call)
    targets: list[tuple[Choice, str, str, Setter]] = []
    for c in reply.choices:
        m = c.message
        if m.unreadable() is not None:  # a part we cannot read: the reply is not released unchecked
            _withhold(c, {"unreadable": {"filtered": True}})
        else:
            targets.extend((c, "assistant", t, functools.partial(m.set_text, path)) for path, t in m.texts() if t)
        for call in m.tool_calls:
            if call.arguments:
                targets.append((c, "tool_call", call.arguments, functools.partial(_set_arguments, m, call)))
    if not targets:
        return reply
    async with stage._admitted(len(targets), ctx, force=True):
        outcomes = await asyncio.gather(*(stage._evaluate(rules, "output", role, t) for _, role, t, _ in targets))
    record([v for o in outcomes for v in o.verdicts])
    worst: dict[int, Outcome] = {}
    for (choice, _, _, set_text), o in zip(targets, outcomes, strict=True):
        if o.action == "redact" and not o.blocked:
            set_text(o.text)
        if o.blocked and id(choice) not in worst:
            worst[id(choice)] = o
    for choice in reply.choices:
        found = worst.get(id(choice))
        if found is None or not found.blocked or found.blocked_by is None:
            continue
        v = found.blocked_by
        had_calls = bool(choice.message.tool_calls)
        _withhold(choice, {v.category: {"filtered": True, "rule": v.rule, "check": v.check, **public_detail(v)}})
        if had_calls:  # the calls are withdrawn, as the Chat reply says with ``tool_calls: null``
            m = choice.message
            m.replace([Text("")])
            m.extra = {**(m.extra or {}), "tool_calls": None}
    return reply


class HoldbackFilter:
    """Release streamed text only after the window containing it passed the checks.

    Text is held until ``holdback_chars`` of new text are pending; then the
    window (``context_chars`` of already released text + the new text) is
    checked and, if it passes, the pending chunks are released in order.
    Chunks without text queue behind pending text so order is kept.
    With several rules the smallest hold-back and the largest context win.
    Tool-call arguments (``ToolCallDelta.arguments``) are held and
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
        self.pending: list[tuple[Chunk, str, str, float]] = []  # chunk, text, tool-call args, t
        self.pending_chars = 0
        self.context = ""
        self.call_context = ""
        self.offset = 0  # characters of the reply already released
        self._seen: set[tuple[str, str, str, str]] = set()

    async def feed(self, chunk: Chunk) -> list[Chunk]:
        text = chunk.text
        args = chunk.tool_arguments if self.call_rules else ""
        self.pending.append((chunk, text, args, time.perf_counter()))
        self.pending_chars += len(text) + len(args)
        if self.pending_chars == 0 or self.pending_chars >= self.holdback:
            return await self._flush()
        return []

    async def finish(self) -> list[Chunk]:
        return await self._flush()

    def _blocked(self, outcome: Outcome) -> None:
        if outcome.blocked and outcome.blocked_by is not None:
            v = outcome.blocked_by
            self.pending.clear()
            self.pending_chars = 0
            raise StreamBlocked(block_message(v, "The reply was"), rule=v.rule, category=v.category, detail=public_detail(v))

    async def _flush(self) -> list[Chunk]:
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
                note_role(call_outcome.verdicts, "tool_call")
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
            chunk.set_text(redacted if first else "")
            first = False


async def _maybe(check: Any) -> Outcome | None:
    return None if check is None else await check

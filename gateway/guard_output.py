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
from gateway.errors import GatewayError, invalid
from gateway.guard_verdicts import block_message, merge_verdicts, note_role, public_detail
from gateway.types import RequestContext, StreamBlocked, Verdict
from policies.engine import Outcome
from policies.policy_set import Rule

if TYPE_CHECKING:
    from gateway.guardrails import GuardrailStage, _RequestState

Setter = Callable[[str], None]


# content parts that carry no text for a check to read (the model gets them as they are)
NON_TEXT_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file"})


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


async def check_reply(
    stage: GuardrailStage, ctx: RequestContext, rules: list[Rule], response: dict[str, Any], record: Callable[[list[Verdict]], None]
) -> dict[str, Any]:
    """The output rules on a whole reply: each choice's text and tool-call arguments are
    checked; a redaction rewrites them, a block empties the choice and ends it with
    ``finish_reason: content_filter``. ``record`` puts the verdicts on the record."""
    choices = response.get("choices")
    if not isinstance(choices, list):
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
    async with stage._admitted(len(targets), ctx, force=True):
        outcomes = await asyncio.gather(*(stage._evaluate(rules, "output", role, t) for _, role, t, _ in targets))
    record([v for o in outcomes for v in o.verdicts])
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
                v.category: {"filtered": True, "rule": v.rule, "check": v.check, **public_detail(v)}
            }
            msg = choice.get("message")
            if isinstance(msg, dict) and msg.get("tool_calls"):
                msg["tool_calls"] = None
    return response


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
            raise StreamBlocked(block_message(v, "The reply was"), rule=v.rule, category=v.category, detail=public_detail(v))

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
            _set_chunk_text(chunk, redacted if first else "")
            first = False


async def _maybe(check: Any) -> Outcome | None:
    return None if check is None else await check

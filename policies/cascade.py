"""How a `safety` check decides: the local scorer, the language gate and the guard cascade.

1. **Language.** The text's language is detected (``evaluators.safety.language``).
   If the local scorer does not cover it, its scores mean nothing and the text is
   never passed as safe: ``unscored_language`` decides — ``escalate`` (the guard
   tier decides), ``flag`` or ``block`` (a verdict with category
   ``unscored_language``). Default: ``escalate`` when the check has a guard
   tier, else ``flag``.
2. **Local scores.** Each threshold's category is read from the scorer.
3. **Cascade** (``escalate:``). A category scored inside the uncertain band
   ``[low, high)`` sends the text to the guard tier, unless some category is over
   its threshold *and* at or above ``high`` (a confident local block). The guard's
   categories decide (a threshold's category the guard flags fires). If the guard
   fails or times out, ``escalate.on_error`` decides: ``local`` (the local
   thresholds; an unscored language is flagged), ``open`` or ``closed``.

Every verdict's ``detail`` says which tier decided and why: ``tier`` (``local``,
``guard`` or ``none`` for an unscored language without a guard) and ``reason``.
The guard-only check types (``llama_guard``, ``moderation``) are here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from evaluators.safety.language import covers, detect
from evaluators.safety.taxonomy import UNSCORED_LANGUAGE
from policies.guard import GuardResult, GuardTransport, build_tier

# scorers that do not declare their languages were all trained on English text
ASSUMED_LANGUAGES = frozenset({"en"})

Getter = Callable[[str, Callable[[], Awaitable[Any]]], "asyncio.Future[Any]"]


@dataclass(slots=True)
class Decision:
    fired: bool
    category: str
    score: float
    detail: dict[str, Any] = field(default_factory=dict)
    action: str | None = None  # overrides the check's action (unscored_language: flag / block / error)


def language_of(text: str, get_cached: dict[str, Any]) -> str:
    lang = get_cached.get("language")
    if lang is None:
        lang = get_cached["language"] = detect(text)
    return str(lang)


def _why_uncertain(uncertain: dict[str, float], band: tuple[float, float]) -> str:
    c = max(uncertain, key=lambda k: uncertain[k])
    return f"uncertain: {c} {uncertain[c]:.2f} in [{band[0]:g}, {band[1]:g})"


async def safety_decision(
    spec: Any,
    text: str,
    direction: str,
    scorer: Any,
    get: Getter,
    memo: dict[str, Any],
    transport: GuardTransport | None,
) -> Decision:
    scores: dict[str, float] = (await asyncio.shield(get("safety", lambda: scorer.ascore([text]))))[0]
    thresholds: dict[str, float] = dict(spec.thresholds)
    ratios = {c: float(scores.get(c, 0.0)) for c in thresholds}
    over = {c: s for c, s in ratios.items() if s >= thresholds[c]}
    local_detail: dict[str, Any] = {"scores": {c: round(s, 4) for c, s in ratios.items()}}
    esc = spec.escalate

    def local(reason: str) -> Decision:
        pool = over or ratios
        category = max(pool, key=lambda c: pool[c])
        return Decision(
            bool(over), category, pool[category],
            {**local_detail, "threshold": thresholds[category], "tier": "local", "reason": reason},
        )

    lang = language_of(text, memo)
    languages = frozenset(getattr(scorer, "languages", ASSUMED_LANGUAGES))
    if not covers(languages, lang, text):
        mode = spec.unscored_language or ("escalate" if esc is not None else "flag")
        why = f"{UNSCORED_LANGUAGE}: {lang} (scorer {getattr(scorer, 'name', '?')} covers {', '.join(sorted(languages))})"
        local_detail["language"] = lang
        local_detail["unscored_language"] = True

        def unscored(reason: str, action: str) -> Decision:
            return Decision(True, UNSCORED_LANGUAGE, 1.0, {**local_detail, "tier": "none", "reason": reason}, action=action)

        if mode != "escalate":
            return unscored(why, mode)
        # a failed guard under on_error: local flags the text (nothing local can read it)
        return await _escalate(spec, esc, text, direction, get, transport, why, lambda r: unscored(r, "flag"), local_detail)
    if esc is None:
        return local("thresholds")
    lo, hi = esc.band
    confident = {c: s for c, s in over.items() if s >= hi}
    uncertain = {c: s for c, s in ratios.items() if lo <= s < hi}
    if confident:
        c = max(confident, key=lambda k: confident[k])
        return local(f"confident: {c} {confident[c]:.2f} >= {hi:g}")
    if not uncertain:
        return local(f"confident: every score outside [{lo:g}, {hi:g})")
    return await _escalate(spec, esc, text, direction, get, transport, _why_uncertain(uncertain, esc.band), local, local_detail)


async def _escalate(
    spec: Any,
    esc: Any,
    text: str,
    direction: str,
    get: Getter,
    transport: GuardTransport | None,
    reason: str,
    fallback: Callable[[str], Decision],
    local_detail: dict[str, Any],
) -> Decision:
    try:
        tier = build_tier(esc.guard, transport)
        res: GuardResult = await asyncio.wait_for(
            asyncio.shield(get(f"guard:{tier.name}:{direction}", lambda: tier.classify(text, direction))),
            esc.timeout_ms / 1000.0,
        )
    except Exception as exc:
        error = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        why = f"{reason}; guard {esc.guard.type}:{esc.guard.route} failed ({error}), on_error={esc.on_error}"
        if esc.on_error == "local":
            d = fallback(why)
            d.detail["guard_error"] = error
            return d
        action = "block" if esc.on_error == "closed" else "pass"
        detail = {**local_detail, "tier": "guard", "reason": why, "guard_error": error}
        return Decision(esc.on_error == "closed", "error", 0.0, detail, action=action)
    fired = {c: s for c, s in res.flagged.items() if c in spec.thresholds}
    detail = {**local_detail, "tier": "guard", "guard": res.tier, "reason": reason, "guard_answer": res.raw}
    if fired:
        c = max(fired, key=lambda k: fired[k])
        return Decision(True, c, fired[c], detail)
    pool = local_detail["scores"]
    c = max(pool, key=lambda k: pool[k])
    if local_detail.get("unscored_language"):
        return Decision(False, UNSCORED_LANGUAGE, 0.0, detail)
    return Decision(False, c, float(pool[c]), detail)


async def guard_decision(spec: Any, text: str, direction: str, get: Getter, transport: GuardTransport | None) -> Decision:
    """The ``llama_guard`` and ``moderation`` check types: the guard alone decides."""
    tier = build_tier(spec, transport)
    res: GuardResult = await asyncio.shield(get(f"guard:{tier.name}:{direction}", lambda: tier.classify(text, direction)))
    wanted = spec.categories
    fired = {c: s for c, s in res.flagged.items() if wanted is None or c in wanted}
    detail: dict[str, Any] = {"tier": "guard", "guard": res.tier, "guard_answer": res.raw}
    if res.scores and spec.type == "moderation":
        detail["scores"] = {c: round(s, 4) for c, s in res.scores.items()}
    if fired:
        c = max(fired, key=lambda k: fired[k])
        return Decision(True, c, fired[c], detail)
    return Decision(False, spec.type, 0.0, detail)

"""``POST /v1/moderations``: OpenAI's moderation API, answered by the local safety scorer.

Apps that call OpenAI's moderation endpoint point their client at Gatehouse and
change nothing else::

    client.moderations.create(model="omni-moderation-latest", input=["text", "more"])

Request: ``input`` is a string, an array of strings or an array of ``{"type":
"text", "text": ...}`` parts (image parts are refused with a 400); ``model`` is
optional and only echoed. Response: OpenAI's shape — per input ``flagged``,
``categories`` (booleans) and ``category_scores`` for all 13 OpenAI categories,
translated from the taxonomy (``evaluators.safety.taxonomy.to_openai``) — plus a
``gatehouse`` object with the taxonomy scores (including ``jailbreak`` and
``prompt_injection``, which OpenAI has no category for), the detected language
and ``unscored_language``.

A harm category is flagged at ``moderations.thresholds[category]``, else the
scorer's recommended threshold for it (the ``categories`` artifact's manifest:
0.8, prompt injection 0.9), else ``moderations.threshold`` (0.5); the legacy ``toxicity`` / ``identity_attack``
scores are reported but flag only when ``moderations.thresholds`` names them. Text in a language the scorer does not cover is
never answered as safe: ``flagged: true`` and ``gatehouse.unscored_language:
true`` while its categories stay false (the scorer could not read it).

Like every endpoint it needs an API key, counts against rate limits and leaves
one traffic record (``endpoint: moderations``; flagged inputs as verdicts of
the pseudo-rule ``moderations``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from evaluators.safety.language import covers, detect
from evaluators.safety.taxonomy import CATEGORIES, TO_OPENAI, UNSCORED_LANGUAGE, to_openai
from gateway.errors import ErrorKind, GatewayError, invalid
from gateway.types import RequestContext, Verdict

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gatehouse.moderations")

JSON_HEADERS = [(b"content-type", b"application/json")]
ASSUMED_LANGUAGES = frozenset({"en"})  # a scorer that does not say was trained on English


class Moderator:
    """The scorer behind ``/v1/moderations`` (the guardrails' own when they loaded one)."""

    def __init__(self, scorer: Any, thresholds: dict[str, float], default: float, metrics: Any) -> None:
        self.scorer = scorer
        self.thresholds = thresholds
        self.default = default
        self.unscored = metrics.counter(
            "guardrail_unscored_language_total",
            "Checked texts in a language the safety scorer does not cover, by direction and detected language",
            ("direction", "language"),
        )

    async def moderate(self, texts: list[str]) -> list[dict[str, Any]]:
        scorer = self.scorer
        if scorer is None:
            raise GatewayError(
                ErrorKind.UNAVAILABLE,
                "No safety scorer is loaded (safety.backend is none), so /v1/moderations cannot score; "
                "set safety.backend in the gateway config.",
            )
        scores = await scorer.ascore(texts)
        languages = frozenset(getattr(scorer, "languages", ASSUMED_LANGUAGES))
        produced = frozenset(getattr(scorer, "categories", ())) or None
        # the scorer's own recommended operating points (the categories artifact's MANIFEST), if any
        recommended: dict[str, float] = dict(getattr(scorer, "thresholds", None) or {})
        out = []
        for text, raw in zip(texts, scores, strict=True):
            ours = {c: float(s) for c, s in raw.items() if produced is None or c in produced}
            lang = detect(text)
            unscored = not covers(languages, lang, text)
            flagged = [] if unscored else [
                c for c, s in ours.items()
                if (c in CATEGORIES or c in self.thresholds) and s >= self.thresholds.get(c, recommended.get(c, self.default))
            ]
            if unscored:
                self.unscored.labels("input", lang).inc()
            openai_scores = to_openai({} if unscored else ours)
            flagged_openai = {name for c in flagged for name in TO_OPENAI.get(c, ())}
            out.append({
                "flagged": bool(flagged) or unscored,
                "categories": {name: name in flagged_openai for name in openai_scores},
                "category_scores": {name: round(s, 6) for name, s in openai_scores.items()},
                "category_applied_input_types": {name: ["text"] for name in openai_scores},
                "gatehouse": {
                    "scorer": getattr(scorer, "name", "?"),
                    "scores": {c: round(s, 6) for c, s in ours.items()},
                    "flagged": flagged,
                    "language": lang,
                    UNSCORED_LANGUAGE: unscored,
                },
            })
        return out


def parse_input(body: Any) -> list[str]:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("Invalid type for 'model': expected a string.", "model")
    inp = body.get("input")
    if inp is None:
        raise invalid("Missing required parameter: 'input'.", "input")
    if isinstance(inp, str):
        return [inp]
    if not isinstance(inp, list) or not inp:
        raise invalid("Invalid 'input': expected a string, an array of strings or an array of content parts.", "input")
    texts = []
    for i, item in enumerate(inp):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif isinstance(item, dict) and item.get("type") == "image_url":
            raise invalid(f"'input[{i}]' is an image; Gatehouse moderates text only.", f"input[{i}]")
        else:
            raise invalid(f"Invalid 'input[{i}]': expected a string or {{\"type\": \"text\", \"text\": ...}}.", f"input[{i}]")
    return texts


async def handle(rt: Runtime, ctx: RequestContext, send: Any) -> None:
    texts = parse_input(ctx.body)
    model = ctx.body.get("model") or "omni-moderation-latest"
    ctx.record.model = model
    moderator: Moderator | None = getattr(rt, "moderator", None)
    if moderator is None:  # pragma: no cover - built at startup
        raise GatewayError(ErrorKind.UNAVAILABLE, "/v1/moderations is not ready.")
    t0 = time.perf_counter()
    results = await moderator.moderate(texts)
    ms = (time.perf_counter() - t0) * 1000
    for i, r in enumerate(results):
        g = r["gatehouse"]
        for c in g["flagged"] or ([UNSCORED_LANGUAGE] if g[UNSCORED_LANGUAGE] else []):
            detail: dict[str, Any] = {"input": i, "language": g["language"]}
            if g[UNSCORED_LANGUAGE]:
                detail[UNSCORED_LANGUAGE] = True
            ctx.record.verdicts.append(Verdict("moderations", "moderation", c, g["scores"].get(c, 1.0), "flag", "input", ms, detail))
    ctx.record.extra["moderation"] = {"inputs": len(texts), "flagged": sum(1 for r in results if r["flagged"])}
    reply = {"id": "modr-" + uuid.uuid4().hex[:24], "model": model, "results": results}
    ctx.record.status = 200
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ctx.response_headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": [*JSON_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": orjson.dumps(reply)})


async def build(rt: Runtime) -> Moderator:
    """The moderation scorer: the guardrails' if they loaded one, else loaded here (unless
    ``safety.backend: none``, when the endpoint answers 503)."""
    settings = rt.settings
    scorer = None
    for stage in rt.stages:
        engine = getattr(stage, "engine", None)
        if engine is not None and engine.safety is not None:
            scorer = engine.safety
    if scorer is None and settings.safety.backend != "none":
        import asyncio

        from evaluators.safety import load_scorer

        # the process-wide embedder, as the guardrails pass it (grounding shares its cache)
        embedder = rt.services.embedder() if settings.safety.backend == "minilm-head" else None
        scorer = await asyncio.to_thread(load_scorer, settings.safety, settings.base_dir, embedder)
    cfg = settings.moderations
    return Moderator(scorer, dict(cfg.thresholds), cfg.threshold, rt.metrics)

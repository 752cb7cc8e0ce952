"""The grounding stage: retrieve passages for the last user turn and cite them.

Turned on by a route (``routes[].grounding: {index, top_k, min_score}``) or by a
request (``extra_body={"grounding": {"index": ..., "top_k": ..., "min_score": ...}}``,
or ``true`` for the defaults); request values override the route's. Only
indexes named in ``grounding.indexes`` can be used: a request never names a path.
The ``grounding`` key never reaches the upstream.

The passages go in one system message, placed after the leading system
messages (so a prompt template's system message still comes first) and before
the conversation. Response: header ``x-gatehouse-grounding`` (compact ASCII
JSON: index, version, chunk ids, scores, titles) and, for whole replies, the
body field ``gatehouse_grounding``; streams carry the header only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

from gateway.errors import invalid
from gateway.grounding.index import Hit, IndexHolder
from gateway.model import Message, Reply, Text
from gateway.types import BaseStage, RequestContext

HEADER = "x-gatehouse-grounding"
MAX_TOP_K = 20
THREAD_SEARCH_ABOVE = 10_000  # exact (flat) scans over more chunks than this leave the event loop
INSTRUCTION = (
    "Answer using the numbered passages below. Cite every passage you use by its number "
    "in square brackets, e.g. [1]. If the passages do not contain the answer, say so instead of guessing."
)


DEFAULT_TOP_K = 4
DEFAULT_MIN_SCORE = 0.25  # MiniLM cosine; unrelated passages score around 0-0.15


@dataclass(frozen=True, slots=True)
class GroundingOptions:
    index: str
    top_k: int = DEFAULT_TOP_K
    min_score: float = DEFAULT_MIN_SCORE


def parse_options(raw: Any, default_index: str | None, base: GroundingOptions | None, where: str) -> GroundingOptions:
    """Validate a route's or request's grounding options (request values override ``base``)."""
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise invalid(f"`{where}` must be an object {{index, top_k, min_score}} or true", param=where)
    unknown = sorted(set(raw) - {"index", "top_k", "min_score"})
    if unknown:
        raise invalid(f"unknown `{where}` field(s) {', '.join(unknown)}; use index, top_k, min_score", param=f"{where}.{unknown[0]}")
    index = raw.get("index", base.index if base else default_index)
    if not isinstance(index, str) or not index:
        raise invalid(f"`{where}.index` is required when several indexes are configured", param=f"{where}.index")
    top_k = raw.get("top_k", base.top_k if base else DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise invalid(f"`{where}.top_k` must be an integer from 1 to {MAX_TOP_K}", param=f"{where}.top_k")
    min_score = raw.get("min_score", base.min_score if base else DEFAULT_MIN_SCORE)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not -1.0 <= min_score <= 1.0:
        raise invalid(f"`{where}.min_score` must be a number from -1 to 1 (cosine similarity)", param=f"{where}.min_score")
    return GroundingOptions(index=index, top_k=top_k, min_score=float(min_score))


def last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c.strip() or None
            if isinstance(c, list):  # content parts: keep the text ones
                text = " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
                return text.strip() or None
            return None
    return None


def passages_message(hits: list[Hit]) -> Message:
    parts = [INSTRUCTION, ""]
    for n, h in enumerate(hits, 1):
        parts.append(f"[{n}] {h.title}\n{h.text}\n")
    return Message("system", [Text("\n".join(parts).rstrip())])


class GroundingStage(BaseStage):
    name = "grounding"

    def __init__(
        self,
        holders: dict[str, IndexHolder],
        embedder: Any,
        route_options: dict[str, GroundingOptions] | None = None,
        services: Any = None,
    ) -> None:
        self.holders = holders
        # services.passage_check (set by the guardrail stage, built after this one) checks
        # passages before they are injected: rules scoped to the `grounding` role
        self.services = services
        self.embedder = embedder
        self.route_options = dict(route_options or {})
        self.default_index = next(iter(holders)) if len(holders) == 1 else None

    def _route_options(self, ctx: RequestContext) -> GroundingOptions | None:
        """The grounding the request's route turns on (``ctx.route``, resolved once after auth)."""
        if ctx.route is None:
            return self.route_options.get(ctx.model)  # a stage driven without the app (tests, tools)
        return self.route_options.get(ctx.route.name) if ctx.route.settings.grounding else None

    async def on_request(self, ctx: RequestContext) -> None:
        request = ctx.request
        if request is None:  # a legacy endpoint (completions, embeddings)
            req = ctx.body.pop("grounding", None)
        else:
            req, request.grounding = request.grounding, None  # never reaches the upstream
        base = self._route_options(ctx)
        if req is None and base is None:
            return
        if req is False:  # a route's grounding is policy, not a caller's choice
            raise invalid("`grounding` must be an object or true; it cannot be turned off per request", param="grounding")
        if request is None:
            raise invalid("`grounding` is only supported on /v1/chat/completions", param="grounding")
        opts = parse_options(req, self.default_index, base, "grounding") if req is not None else base
        assert opts is not None
        holder = self.holders.get(opts.index)
        if holder is None:
            raise invalid(
                f"unknown grounding index {opts.index!r}; configured: {', '.join(sorted(self.holders)) or '(none)'}",
                param="grounding.index",
            )
        index = holder.current  # keep this object for the whole request, whatever a swap does
        question = request.last_user_text()
        hits: list[Hit] = []
        if question:
            vec = (await self.embedder.aencode([question]))[0]
            if index.index_type == "flat" and len(index) > THREAD_SEARCH_ABOVE:
                hits = await asyncio.to_thread(index.search, vec, opts.top_k, opts.min_score, question)
            else:
                hits = index.search(vec, opts.top_k, opts.min_score, question)
        dropped: list[str] = []
        check = getattr(self.services, "passage_check", None)
        if hits and check is not None:
            checked = await check(ctx, [h.text for h in hits])
            dropped = [h.chunk_id for h, t in zip(hits, checked, strict=True) if t is None]
            hits = [replace(h, text=t) for h, t in zip(hits, checked, strict=True) if t is not None]
        if hits:
            request.insert_after_system(passages_message(hits))
        info = {
            "index": opts.index,
            "version": index.version,
            "chunks": [{"n": n, "id": h.chunk_id, "doc": h.doc_id, "score": h.score, "title": h.title} for n, h in enumerate(hits, 1)],
        }
        if dropped:
            info["dropped"] = dropped  # blocked by a policy rule scoped to `grounding`
        ctx.state[self.name] = info
        ctx.response_headers[HEADER] = header_value(info)
        ctx.record.grounding_index = f"{opts.index}@{index.version}"
        ctx.record.grounding_chunk_ids = [h.chunk_id for h in hits]
        ctx.record.extra["grounding_retrieval"] = index.retrieval  # dense, or hybrid with its fusion parameters

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply:
        info = ctx.state.get(self.name)
        if info is not None:
            reply.grounding = info  # each door renders it (gatehouse_grounding)
        return reply

    async def aclose(self) -> None:
        for h in self.holders.values():
            await h.aclose()


def header_value(info: dict[str, Any], max_bytes: int = 4096) -> str:
    """Compact, ASCII-only JSON; long titles are cut so the header stays small."""
    slim = {
        "index": info["index"],
        "version": info["version"],
        "chunks": [{"id": c["id"], "score": c["score"], "title": c["title"][:60]} for c in info["chunks"]],
    }
    out = json.dumps(slim, separators=(",", ":"), ensure_ascii=True)
    while len(out) > max_bytes and slim["chunks"]:
        slim["chunks"].pop()
        slim["truncated"] = True
        out = json.dumps(slim, separators=(",", ":"), ensure_ascii=True)
    return out

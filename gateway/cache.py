"""Response cache: exact match on the normalised request, in Redis, per tenant.

Opt-in per route (``routes[].cache: true``), TTL ``cache.ttl_seconds``. The key
is ``{prefix}cache:{tenant}:{sha256}`` over the canonical JSON of: endpoint,
public model, the request body without transport-only fields (``stream``,
``stream_options``, ``user``), the prompt version (``ctx.record.prompt_version``,
set by the prompts stage which runs before us) and the policy in force.

Policy version: guardrails run *after* the cache on the way in, so the app
stamps ``ctx.record.policy_version`` with the live version before any stage
runs, and we key on the caller's policy name plus that version; without
guardrails it is unset, and a policy edit reaches cached answers only when they
expire (``ttl_seconds``). The stored entry also records the version it was
produced under.

Never stored: streaming requests (the cache only sees whole replies; streamed
requests bypass it and get no header), replies with any verdict whose action is
``block``, ``flag`` or ``redact`` (input or output), replies with a
``content_filter`` finish reason, a reply without choices, and bodies over
``MAX_ENTRY_BYTES``. The entry is the neutral reply in its canonical (Chat)
serialisation, so a hit on one door replays on another in that door's shape. Output guardrails run
before ``on_response`` here (stages unwind in reverse), so their verdicts are in
``ctx.record.verdicts`` by then.

Requests may opt out: ``cache-control: no-cache`` skips the lookup,
``no-store`` skips the write. Redis errors make the cache a miss (it is an
optimisation), counted in ``gatehouse_cache_errors_total`` and logged.
Only JSON goes in and comes out of Redis.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any
from urllib.parse import quote

import orjson

from gateway.model import Reply
from gateway.protocols import chat
from gateway.types import BaseStage, RequestContext, Stage

log = logging.getLogger("gatehouse.cache")

HEADER = "x-gatehouse-cache"
MAX_ENTRY_BYTES = 1024 * 1024
TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user"})
UNSAFE_ACTIONS = frozenset({"block", "flag", "redact"})
STATE = "cache"


def cache_key(ctx: RequestContext, prefix: str) -> tuple[str, str | None]:
    # the neutral request in its canonical (Chat) serialisation: equivalent requests share a key
    # whatever door they came in by
    sent = chat.request_out(ctx.request) if ctx.request is not None else ctx.body
    body = {k: v for k, v in sent.items() if k not in TRANSPORT_FIELDS}
    policy_version = ctx.record.policy_version
    material = {
        "endpoint": ctx.endpoint,
        "body": body,
        "prompt_version": ctx.record.prompt_version,
        "policy": ctx.caller.policy,
        "policy_version": policy_version,
    }
    h = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{prefix}cache:{quote(ctx.caller.tenant, safe='')}:{h}", policy_version


def storable(ctx: RequestContext, reply: Reply) -> str | None:
    """Why this reply must not be cached, or None when it may be."""
    for v in ctx.record.verdicts:
        if v.action in UNSAFE_ACTIONS:
            return f"verdict:{v.action}"
    if not reply.choices:
        return "no-choices"
    if any(c.finish_reason == "content_filter" for c in reply.choices):
        return "content_filter"
    if ctx.record.finish_reason == "content_filter":
        return "content_filter"
    if reply.extra.get("error") is not None:
        return "error"
    return None


class CacheStage(BaseStage):
    name = "cache"

    def __init__(self, redis: Any, routes: set[str], ttl: int, prefix: str, metrics: Any = None) -> None:
        self.redis = redis
        self.routes = routes
        self.ttl = ttl
        self.prefix = prefix
        if metrics is None:
            from gateway.metrics import Metrics

            metrics = Metrics()
        self._results = metrics.counter("cache_requests_total", "Response cache lookups by result", ("result",))
        self._errors = metrics.counter("cache_errors_total", "Response cache Redis failures by operation", ("op",))
        self._skipped = metrics.counter("cache_store_skipped_total", "Replies not cached, by reason", ("reason",))

    def _applies(self, ctx: RequestContext) -> bool:
        cached = ctx.route.settings.cache if ctx.route is not None else ctx.model in self.routes  # no route: a stage driven alone
        return ctx.endpoint in ("chat", "completions") and cached and not ctx.stream

    async def on_request(self, ctx: RequestContext) -> None:
        if not self._applies(ctx):
            return
        cc = ctx.headers.get("cache-control", "").lower()
        key, policy_version = cache_key(ctx, self.prefix)
        ctx.state[STATE] = {"key": key, "policy_version": policy_version, "no_store": "no-store" in cc, "hit": False}
        ctx.record.cache_hit = False
        ctx.response_headers[HEADER] = "miss"
        if "no-cache" in cc:
            self._results.labels("bypass").inc()
            return
        try:
            raw = await self.redis.get(key)
        except Exception as exc:
            self._error("get", exc)
            return
        if raw is None:
            self._results.labels("miss").inc()
            return
        try:
            entry = orjson.loads(raw)
            response = entry["response"]
            if not isinstance(response, dict):
                raise TypeError("response is not an object")
            reply = chat.reply_in(response)
        except Exception as exc:
            self._error("decode", exc)
            return
        self._results.labels("hit").inc()
        ctx.state[STATE]["hit"] = True
        ctx.short_circuit = reply  # any door renders it in its own protocol
        ctx.record.cache_hit = True
        ctx.response_headers[HEADER] = "hit"

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply:
        st = ctx.state.get(STATE)
        if not st or st["hit"] or st["no_store"]:
            return reply
        why = storable(ctx, reply)
        if why is not None:
            self._skipped.labels(why.split(":")[0]).inc()
            return reply
        data = orjson.dumps(
            {
                # the neutral reply in its canonical (Chat) serialisation, read back by any door
                "response": chat.reply_out(reply),
                "stored_at": time.time(),
                "policy_version": ctx.record.policy_version or st["policy_version"],
                "prompt_version": ctx.record.prompt_version,
            }
        )
        if len(data) > MAX_ENTRY_BYTES:
            self._skipped.labels("too_large").inc()
            return reply
        try:
            await self.redis.set(st["key"], data, ex=self.ttl)
        except Exception as exc:
            self._error("set", exc)
        return reply

    def _error(self, op: str, exc: BaseException) -> None:
        self._errors.labels(op).inc()
        self._results.labels("error").inc()
        log.warning("response cache: Redis %s failed (%s: %s); serving without cache", op, type(exc).__name__, exc)


async def build_stage(services: Any) -> Stage | None:
    settings = services.settings
    routes = {r.name for r in settings.routes if r.cache}
    if not routes:
        return None
    if services.redis is None:
        log.warning("routes %s have cache: true but redis.url is not set; the response cache is off", sorted(routes))
        return None
    return CacheStage(services.redis, routes, settings.cache.ttl_seconds, settings.redis.key_prefix, services.metrics)

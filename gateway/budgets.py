"""Spend budgets per key and per tenant, enforced atomically across replicas.

A ``Limit`` caps the spend (in the price tables' currency, see ``gateway.cost``)
of one key or one tenant per calendar ``day`` or ``month`` (UTC), optionally for
one public model only. Limits come from the config (``budgets.limits``) and,
with Redis, from ``gatehouse keys budget set`` (a JSON hash, read through a 1 s
cache, so a change reaches every replica within a second).

Enforcement follows the rate limiter (``gateway.ratelimit``): one Lua script
checks every applicable bucket and commits to all of them only if all allow.

- **Admission** (middleware, before the request is dispatched, so every door and
  streams go through it): a request is admitted while the bucket's committed
  spend (settled + held) is below the limit, and it then holds its estimated
  cost (prompt + ``max_tokens`` at the route's dearest price) so concurrent
  requests on other replicas see it. The last admitted request may overrun the
  limit by at most its own cost; the next one is refused.
- **Settlement** (after the reply, streams included, shielded from client
  disconnects): the hold is replaced by the real cost. A hold whose replica
  died expires after ``LEASE_SECONDS``.
- Over budget: 429 ``budget_exceeded`` (the one error table), ``Retry-After`` =
  until the window resets.

Per bucket (``{prefix}budget:{key|tenant}:{id}:{period}:{window}[:model]``):
``:spent`` (integer micro-units, expires a day after its window) and ``:held``
(zset ``rid|micro`` -> lease expiry ms). Time for leases comes from Redis.

Soft thresholds (``budgets.soft_thresholds``, default 80%): crossing one on
settlement increments ``gatehouse_budget_threshold_crossed_total`` and logs a
``budget threshold`` event. ``gatehouse_budget_used_ratio`` is the burn per
budget (dashboards, exhaustion forecast alert).

Redis failures are never silent (``gatehouse_budget_redis_errors_total``, a log
line, ``/readyz`` check ``budgets``): ``on_redis_error: closed`` (default)
answers 503, ``open`` admits unmetered (``gatehouse_budget_decisions_total{
result="degraded"}``). Without ``redis.url`` budgets are per process (logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from gateway.asgi import peek_json
from gateway.config import BudgetLimit, Settings
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import Metrics
from gateway.types import Caller

log = logging.getLogger("gatehouse.budgets")

MICRO = 1_000_000
LEASE_SECONDS = 600.0
DEFS_TTL = 1.0
LOG_EVERY = 10.0
PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # key | tenant
    owner: str  # key id or tenant name
    period: str  # day | month
    amount: float
    model: str | None = None
    source: str = "config"  # config | managed

    def applies(self, model: str) -> bool:
        return self.model is None or self.model == model

    def public(self) -> dict[str, Any]:
        return {"scope": self.scope, "id": self.owner, "period": self.period, "amount": self.amount, "model": self.model, "source": self.source}


def window(period: str, now: datetime) -> tuple[str, float]:
    """(window id, seconds until it ends) for a UTC calendar day or month."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("d%Y%m%d"), (start + timedelta(days=1) - now).total_seconds()
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (start + timedelta(days=32)).replace(day=1)
    return start.strftime("m%Y%m"), (nxt - now).total_seconds()


@dataclass(frozen=True, slots=True)
class Bucket:
    limit: Limit
    base: str  # redis key prefix of this window's counters
    limit_micro: int
    ttl: int  # seconds the spend counter outlives (its window + a day)
    resets_in: float


@dataclass(slots=True)
class Hold:
    rid: str
    buckets: tuple[Bucket, ...]
    micro: int
    settled: bool = False


class Backend(Protocol):
    async def reserve(self, rid: str, buckets: Sequence[Bucket], micro: int) -> tuple[bool, int, int]: ...

    async def settle(self, rid: str, buckets: Sequence[Bucket], held: int, actual: int) -> list[int]: ...

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]: ...


# KEYS: 2 per bucket (spent, held); ARGV: rid, hold micro, lease ms, then per bucket: limit micro
# -> {1, 0, 0} | {0, bucket index (1-based), committed micro}
RESERVE_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, hold, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for b = 0, #KEYS / 2 - 1 do
  local sk, hk = KEYS[b*2+1], KEYS[b*2+2]
  redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
  local committed = tonumber(redis.call('GET', sk) or '0')
  for _, m in ipairs(redis.call('ZRANGE', hk, 0, -1)) do committed = committed + tonumber(string.match(m, '|(%d+)$')) end
  if committed >= tonumber(ARGV[4+b]) then return {0, b + 1, committed} end
end
for b = 0, #KEYS / 2 - 1 do
  local hk = KEYS[b*2+2]
  redis.call('ZADD', hk, now + lease, rid .. '|' .. hold)
  redis.call('PEXPIRE', hk, lease)
end
return {1, 0, 0}
"""

# KEYS: 2 per bucket; ARGV: rid, hold micro, actual micro, then per bucket: ttl seconds -> settled spend per bucket
SETTLE_LUA = r"""
local rid, hold, actual = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for b = 0, #KEYS / 2 - 1 do
  local sk, hk = KEYS[b*2+1], KEYS[b*2+2]
  redis.call('ZREM', hk, rid .. '|' .. hold)
  out[b+1] = redis.call('INCRBY', sk, actual)
  redis.call('EXPIRE', sk, tonumber(ARGV[4+b]))
end
return out
"""

SPENT_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for b = 0, #KEYS / 2 - 1 do
  local committed = tonumber(redis.call('GET', KEYS[b*2+1]) or '0')
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[b*2+2], now, '+inf')) do committed = committed + tonumber(string.match(m, '|(%d+)$')) end
  out[b+1] = committed
end
return out
"""


class RedisBackend:
    def __init__(self, redis: Any) -> None:
        self._reserve = redis.register_script(RESERVE_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._spent = redis.register_script(SPENT_LUA)

    @staticmethod
    def _keys(buckets: Sequence[Bucket]) -> list[str]:
        return [k for b in buckets for k in (b.base + ":spent", b.base + ":held")]

    async def reserve(self, rid: str, buckets: Sequence[Bucket], micro: int) -> tuple[bool, int, int]:
        ok, idx, committed = await self._reserve(keys=self._keys(buckets), args=[rid, micro, int(LEASE_SECONDS * 1000), *(b.limit_micro for b in buckets)])
        return bool(int(ok)), int(idx) - 1, int(committed)

    async def settle(self, rid: str, buckets: Sequence[Bucket], held: int, actual: int) -> list[int]:
        out = await self._settle(keys=self._keys(buckets), args=[rid, held, actual, *(b.ttl for b in buckets)])
        return [int(x) for x in out]

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        return [int(x) for x in await self._spent(keys=self._keys(buckets), args=[])]


class MemoryBackend:
    """One process only (no Redis configured); same semantics, leases by monotonic time."""

    def __init__(self) -> None:
        self._spent: dict[str, int] = {}
        self._held: dict[str, dict[str, tuple[float, int]]] = {}

    def _committed(self, base: str, now: float) -> int:
        held = self._held.setdefault(base, {})
        for rid in [r for r, (exp, _) in held.items() if exp <= now]:
            del held[rid]
        return self._spent.get(base, 0) + sum(m for _, m in held.values())

    async def reserve(self, rid: str, buckets: Sequence[Bucket], micro: int) -> tuple[bool, int, int]:
        now = time.monotonic()
        for i, b in enumerate(buckets):
            c = self._committed(b.base, now)
            if c >= b.limit_micro:
                return False, i, c
        for b in buckets:
            self._held[b.base][rid] = (now + LEASE_SECONDS, micro)
        return True, -1, 0

    async def settle(self, rid: str, buckets: Sequence[Bucket], held: int, actual: int) -> list[int]:
        out = []
        for b in buckets:
            self._held.get(b.base, {}).pop(rid, None)
            self._spent[b.base] = self._spent.get(b.base, 0) + actual
            out.append(self._spent[b.base])
        return out

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        now = time.monotonic()
        return [self._committed(b.base, now) for b in buckets]


class LimitStore:
    """Budget definitions: the config's, plus managed ones in a Redis hash (JSON values)."""

    def __init__(self, limits: Sequence[BudgetLimit], redis: Any = None, prefix: str = "gatehouse:", ttl: float = DEFS_TTL) -> None:
        self.config: dict[tuple[str, str], list[Limit]] = {}
        for lim in limits:
            self.config.setdefault((lim.scope, lim.id), []).append(Limit(lim.scope, lim.id, lim.period, lim.amount, lim.model))
        self.redis = redis
        self.hash = prefix + "budget:limits"
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, list[Limit]]] = {}

    @property
    def empty(self) -> bool:
        return not self.config and self.redis is None

    @staticmethod
    def _field(scope: str, owner: str) -> str:
        return f"{scope}:{owner}"

    async def for_caller(self, caller: Caller) -> list[Limit]:
        """Every limit on the caller's key and tenant (cached ``ttl`` seconds per caller)."""
        ck = (caller.key_id, caller.tenant)
        now = time.monotonic()
        hit = self._cache.get(ck)
        if hit is not None and hit[0] > now:
            return hit[1]
        out = [*self.config.get(("key", caller.key_id), ()), *self.config.get(("tenant", caller.tenant), ())]
        if self.redis is not None:
            raws = await self.redis.hmget(self.hash, [self._field("key", caller.key_id), self._field("tenant", caller.tenant)])
            for (scope, owner), raw in zip((("key", caller.key_id), ("tenant", caller.tenant)), raws, strict=True):
                out += self._decode(scope, owner, raw)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[ck] = (now + self.ttl, out)
        return out

    @staticmethod
    def _decode(scope: str, owner: str, raw: Any) -> list[Limit]:
        if raw is None:
            return []
        return [Limit(scope, owner, d["period"], float(d["amount"]), d.get("model"), "managed") for d in orjson.loads(raw)]

    def _need_redis(self) -> Any:
        if self.redis is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "managed budgets need redis.url (spend is shared by all replicas); "
                               "without Redis, set budgets.limits in the config")
        return self.redis

    async def managed(self, scope: str, owner: str) -> list[Limit]:
        return self._decode(scope, owner, await self._need_redis().hget(self.hash, self._field(scope, owner)))

    async def set(self, scope: str, owner: str, period: str, amount: float | None, model: str | None = None) -> list[Limit]:
        """Set (or with ``amount=None`` remove) one managed limit; returns the owner's managed limits."""
        if scope not in ("key", "tenant") or period not in PERIODS:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"scope must be key|tenant and period day|month, got {scope!r}, {period!r}")
        if amount is not None and not (isinstance(amount, (int, float)) and math.isfinite(amount) and amount > 0):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"a budget amount must be > 0, got {amount!r}", param="amount")
        r = self._need_redis()
        kept = [lim for lim in await self.managed(scope, owner) if (lim.period, lim.model) != (period, model)]
        if amount is not None:
            kept.append(Limit(scope, owner, period, float(amount), model, "managed"))
        field = self._field(scope, owner)
        if kept:
            await r.hset(self.hash, field, orjson.dumps([{"period": x.period, "amount": x.amount, "model": x.model} for x in kept]))
        else:
            await r.hdel(self.hash, field)
        self._cache.clear()
        return kept

    async def all(self) -> list[Limit]:
        out = [lim for lims in self.config.values() for lim in lims]
        if self.redis is not None:
            for field, raw in (await self.redis.hgetall(self.hash)).items():
                scope, _, owner = (field.decode() if isinstance(field, bytes) else field).partition(":")
                out += self._decode(scope, owner, raw)
        return out


class Budgets:
    """Admission (``admit``) and settlement of spend against the caller's limits."""

    def __init__(self, settings: Settings, store: LimitStore, backend: Backend, meter: Any, metrics: Metrics,
                 *, prefix: str = "gatehouse:", distributed: bool = True, op_timeout: float = 0.5,
                 clock: Any = None) -> None:
        cfg = settings.budgets
        self.cfg = cfg
        self.store = store
        self.backend = backend
        self.meter = meter
        self.prefix = prefix + "budget:"
        self.distributed = distributed
        self.op_timeout = op_timeout
        self.max_body_bytes = settings.server.max_body_bytes
        self.clock = clock or (lambda: datetime.now(UTC))
        self._errors = metrics.counter("budget_redis_errors_total", "Budget Redis failures by operation", ("op",))
        self._decisions = metrics.counter("budget_decisions_total", "Budget admissions by result", ("result",))
        self._crossed = metrics.counter("budget_threshold_crossed_total", "Soft budget thresholds crossed",
                                        ("scope", "period", "threshold"))
        self._used = metrics.gauge("budget_used_ratio", "Spend / limit of each budget in its current window",
                                   ("scope", "owner", "period", "model"))
        for op in ("reserve", "settle", "limits"):
            self._errors.labels(op)
        self.redis_up = True
        self._last_log = 0.0

    @property
    def healthy(self) -> bool:
        return self.redis_up or self.cfg.on_redis_error == "open"

    def buckets(self, limits: Sequence[Limit], model: str) -> tuple[Bucket, ...]:
        now = self.clock()
        out = []
        for lim in limits:
            if not lim.applies(model):
                continue
            wid, left = window(lim.period, now)
            base = f"{self.prefix}{lim.scope}:{lim.owner}:{lim.period}:{wid}" + (f":{lim.model}" if lim.model else "")
            out.append(Bucket(lim, base, round(lim.amount * MICRO), int(left) + 86_400, left))
        return tuple(out)

    async def reserve(self, caller: Caller, model: str, hold: float) -> Hold | None:
        """Admit or raise (429 ``budget_exceeded``; 503 when Redis is down and failures close)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                limits = await self.store.for_caller(caller)
                buckets = self.buckets(limits, model)
                if not buckets:
                    return None
                rid = uuid.uuid4().hex
                micro = max(0, math.ceil(hold * MICRO))
                ok, idx, committed = await self.backend.reserve(rid, buckets, micro)
        except Exception as exc:
            self._degrade("reserve", exc)  # raises 503 unless failures open
            return None
        self._ok()
        if ok:
            self._decisions.labels("allowed").inc()
            return Hold(rid, buckets, micro)
        self._decisions.labels("denied").inc()
        b = buckets[idx]
        lim = b.limit
        self._used.labels(lim.scope, lim.owner, lim.period, lim.model or "").set(committed / b.limit_micro)
        secs = max(1, math.ceil(b.resets_in))
        what = f"model `{lim.model}` for " if lim.model else ""
        raise GatewayError(
            ErrorKind.BUDGET_EXCEEDED,
            f"Budget exceeded: {what}{lim.scope} {lim.owner} has spent {committed / MICRO:.6g} of its "
            f"{lim.amount:g} {self.meter.currency} {lim.period}ly budget. It resets in {secs}s.",
            headers={"Retry-After": str(secs)},
            extra={"scope": lim.scope, "period": lim.period, "limit": lim.amount, "spent": committed / MICRO},
        )

    async def settle(self, hold: Hold | None, cost: float) -> None:
        """Replace the hold with the real cost; never raises."""
        if hold is None or hold.settled:
            return
        hold.settled = True
        actual = max(0, round(cost * MICRO))
        try:
            async with asyncio.timeout(self.op_timeout):
                totals = await self.backend.settle(hold.rid, hold.buckets, hold.micro, actual)
        except Exception as exc:
            self._failed("settle", exc)
            return
        self._ok()
        for b, after in zip(hold.buckets, totals, strict=True):
            lim = b.limit
            self._used.labels(lim.scope, lim.owner, lim.period, lim.model or "").set(after / b.limit_micro)
            before = after - actual
            for t in self.cfg.soft_thresholds:
                mark = t * b.limit_micro
                if before < mark <= after:
                    self._crossed.labels(lim.scope, lim.period, f"{t:g}").inc()
                    log.warning("budget threshold: %s %s spent %.6g of %g %s this %s (%.0f%% crossed)%s", lim.scope, lim.owner,
                                after / MICRO, lim.amount, self.meter.currency, lim.period, t * 100,
                                f" on model {lim.model}" if lim.model else "")

    async def spend(self, limits: Sequence[Limit]) -> list[float]:
        """Committed spend (settled + held) of each limit's current window (model-specific limits: their model)."""
        buckets = [self.buckets([lim], lim.model or "")[0] for lim in limits]
        if not buckets:
            return []
        return [m / MICRO for m in await self.backend.spent(buckets)]

    # --- ASGI admission (the app's Budget middleware calls this) -------------------

    async def admit(self, scope: dict[str, Any], receive: Any, send: Any, caller: Caller, app: Any) -> None:
        if self.store.empty:
            await app(scope, receive, send)
            return
        body, receive = await peek_json(scope, receive, self.max_body_bytes)
        state = scope["state"]
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else ""
        hold_cost = self.meter.estimate_hold(model, body, self.cfg.default_max_tokens) if isinstance(body, dict) else 0.0
        hold = await self.reserve(caller, model, hold_cost)
        if hold is None:
            await app(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        finally:
            record = state.get("record")
            cost = 0.0
            if record is not None:
                cost = record.cost or 0.0  # settled by the handler (gateway.api.settle_cost)
            # shielded: a client disconnect must not leave the hold in place
            await asyncio.shield(self.settle(hold, cost))

    def _degrade(self, op: str, exc: BaseException) -> None:
        self._failed(op, exc)
        if self.cfg.on_redis_error == "open":
            self._decisions.labels("degraded").inc()
            return
        self._decisions.labels("unavailable").inc()
        raise GatewayError(ErrorKind.UNAVAILABLE, "budget store unavailable (Redis); try again shortly") from exc

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors.labels(op).inc()
        now = time.monotonic()
        if self.redis_up or now - self._last_log >= LOG_EVERY:
            log.error("budgets: Redis %s failed (%s: %s); on_redis_error=%s -> %s", op, type(exc).__name__, exc,
                      self.cfg.on_redis_error, "admitting unmetered" if self.cfg.on_redis_error == "open" else "answering 503")
            self._last_log = now
        self.redis_up = False

    def _ok(self) -> None:
        if not self.redis_up:
            log.warning("budgets: Redis reachable again; budgets enforced")
        self.redis_up = True


def build_budgets(settings: Settings, redis: Any, meter: Any, metrics: Metrics) -> Budgets:
    prefix = settings.redis.key_prefix
    store = LimitStore(settings.budgets.limits, redis, prefix)
    if redis is not None:
        return Budgets(settings, store, RedisBackend(redis), meter, metrics, prefix=prefix)
    if settings.budgets.limits:
        log.warning("budgets are per process: redis.url is not set, so each replica meters its own spend")
    return Budgets(settings, store, MemoryBackend(), meter, metrics, prefix=prefix, distributed=False)


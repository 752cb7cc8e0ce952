"""Per-key and per-tenant rate limits, enforced atomically across replicas.

Three limits, each optional: requests per minute (``rpm``), tokens per minute
(``tpm``) and concurrent requests (``concurrent``).

Algorithm: a **sliding window log** in Redis, checked and committed by one Lua
script, so N replicas sharing one Redis admit exactly what one would. We chose
the log over GCRA because "N per minute" then means what operators read: in
*any* 60 s window at most N requests (and at most N reserved tokens) are
admitted; GCRA with a one-minute burst admits up to ~2N in a window. The cost
is memory: one sorted-set member per admitted request in the last minute
(~100 bytes each; 10k rpm is ~1 MB per key), fine for per-key API limits.
Time comes from Redis (``TIME``), so replica clock skew does not matter.

Per bucket (``{prefix}rl:{key|tenant}:{id}:``): ``req`` (zset rid -> ms),
``tok`` (zset "rid|tokens" -> ms) with ``toksum`` (running sum), ``conc``
(zset rid -> lease expiry ms; a crashed replica's slots expire after
``lease_seconds``). The script checks every bucket and commits to all of
them only if all allow, so a request denied by one limit costs nothing in the
others.

Tokens: ``check`` reserves an estimate (capped at the bucket's tpm so a huge
request is not refused forever) and ``record_tokens`` reconciles it with the
actual usage after the response (a refund or a debt; a debt past the limit
delays the next requests). ``release`` frees the concurrency slot.

Per-key overrides travel on the ``Caller`` as scopes ``limit:<name>=<n>``
(``LIMIT_NAMES``): ``rpm``/``tpm``/``concurrent`` override ``rate_limits`` for
that key; ``tenant_rpm``/``tenant_tpm``/``tenant_concurrent`` add a bucket shared
by every key of the tenant (give all the tenant's keys the same value).
Config keys write them in ``auth.keys[].scopes``; managed keys store ``limits``.

Redis failures are never silent: every failed call increments
``gatehouse_ratelimit_redis_errors_total``, sets ``gatehouse_redis_up`` to 0,
logs (on the transition, then at most every 10 s), and flips ``healthy`` which
``/readyz`` reads. Then ``on_redis_error: closed`` (default) answers 503 and
``open`` admits the request unlimited; there is no per-replica fallback. A
background probe (``start()``) pings Redis every second, so readiness recovers
without traffic.

Without ``redis.url`` the limiter runs in-process (``MemoryBackend``): correct
for one replica only; ``build_limiter`` logs that at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.asgi import peek_json
from gateway.config import RateLimitSettings, Settings
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import Metrics
from gateway.types import Caller

log = logging.getLogger("gatehouse.ratelimit")

LIMIT_NAMES = ("rpm", "tpm", "concurrent", "tenant_rpm", "tenant_tpm", "tenant_concurrent")
WINDOW_SECONDS = 60.0
LEASE_SECONDS = 600.0  # a concurrency slot outlives the longest request, then expires
CONCURRENCY_RETRY_AFTER = 1.0
LOG_EVERY = 10.0

LIMIT_TEXT = {"rpm": "requests per minute", "tpm": "tokens per minute", "concurrent": "concurrent requests"}


def limit_scopes(limits: Mapping[str, int]) -> tuple[str, ...]:
    """``{"rpm": 60}`` -> ``("limit:rpm=60",)``: how limits ride on ``Caller.scopes``."""
    return tuple(f"limit:{k}={int(v)}" for k, v in sorted(limits.items()) if v)


def parse_limit_scopes(scopes: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in scopes:
        if not s.startswith("limit:"):
            continue
        name, _, value = s[len("limit:"):].partition("=")
        if name in LIMIT_NAMES and value.isdigit() and int(value) > 0:
            out[name] = int(value)
        else:
            log.warning("ignoring malformed limit scope %r (expected limit:<%s>=<n>)", s, "|".join(LIMIT_NAMES))
    return out


@dataclass(frozen=True, slots=True)
class Bucket:
    base: str  # redis key prefix (or memory key) of this bucket
    scope: str  # "key" | "tenant"
    rpm: int = 0  # 0 = unlimited
    tpm: int = 0
    concurrent: int = 0

    def reserve(self, est: int) -> int:
        return min(max(est, 0), self.tpm) if self.tpm else 0


@dataclass(slots=True)
class Lease:
    """What an admitted request holds until ``release``/``record_tokens``."""

    rid: str
    buckets: tuple[Bucket, ...]
    reserved: tuple[int, ...]
    released: bool = False
    reconciled: bool = False


@dataclass(slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds; 0 when allowed
    reason: str | None = None  # "rpm" | "tpm" | "concurrent" | "redis" | None
    scope: str | None = None  # "key" | "tenant"
    lease: Lease | None = None
    degraded: bool = False  # admitted unlimited because Redis is down (on_redis_error: open)

    def raise_if_denied(self) -> None:
        if self.allowed:
            return
        secs = max(1, math.ceil(self.retry_after))
        what = LIMIT_TEXT.get(self.reason or "", self.reason or "limit")
        raise GatewayError(
            ErrorKind.RATE_LIMITED,
            f"Rate limit reached for {what} ({self.scope}). Retry after {secs}s.",
            headers={"Retry-After": str(secs)},
            extra={"limit": self.reason, "scope": self.scope},
        )


class Backend(Protocol):
    async def acquire(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int]) -> tuple[bool, float, str, int]: ...

    async def reconcile(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int], actual: int) -> None: ...

    async def release(self, rid: str, buckets: Sequence[Bucket]) -> None: ...

    async def ping(self) -> None: ...


# KEYS: 4 per bucket (req, tok, toksum, conc)
# ARGV: rid, window_ms, lease_ms, then 4 per bucket (rpm, tpm, concurrent, reserved tokens)
# -> {allowed 0/1, retry_after_ms, reason, bucket index (1-based)}
ACQUIRE_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local win = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local cutoff = now - win
local nb = #KEYS / 4
for b = 0, nb - 1 do
  local rk, tk, sk, ck = KEYS[b*4+1], KEYS[b*4+2], KEYS[b*4+3], KEYS[b*4+4]
  local rpm, tpm, conc, est = tonumber(ARGV[4+b*4]), tonumber(ARGV[5+b*4]), tonumber(ARGV[6+b*4]), tonumber(ARGV[7+b*4])
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', cutoff)
    local n = redis.call('ZCARD', rk)
    if n >= rpm then
      local e = redis.call('ZRANGE', rk, n - rpm, n - rpm, 'WITHSCORES')
      return {0, tonumber(e[2]) + win - now, 'rpm', b + 1}
    end
  end
  if tpm > 0 then
    local old = redis.call('ZRANGEBYSCORE', tk, '-inf', cutoff)
    if #old > 0 then
      local freed = 0
      for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, '|(%-?%d+)$')) end
      redis.call('ZREMRANGEBYSCORE', tk, '-inf', cutoff)
      redis.call('DECRBY', sk, freed)
    end
    local sum = tonumber(redis.call('GET', sk) or '0')
    if sum < 0 or redis.call('ZCARD', tk) == 0 then sum = 0; redis.call('SET', sk, 0, 'PX', win) end
    if sum + est > tpm then
      local all = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
      local wait = win
      for i = 1, #all, 2 do
        sum = sum - tonumber(string.match(all[i], '|(%-?%d+)$'))
        if sum + est <= tpm then wait = tonumber(all[i+1]) + win - now; break end
      end
      return {0, wait, 'tpm', b + 1}
    end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= conc then return {0, -1, 'concurrent', b + 1} end
  end
end
for b = 0, nb - 1 do
  local rk, tk, sk, ck = KEYS[b*4+1], KEYS[b*4+2], KEYS[b*4+3], KEYS[b*4+4]
  local rpm, tpm, conc, est = tonumber(ARGV[4+b*4]), tonumber(ARGV[5+b*4]), tonumber(ARGV[6+b*4]), tonumber(ARGV[7+b*4])
  if rpm > 0 then
    redis.call('ZADD', rk, now, rid)
    redis.call('PEXPIRE', rk, win)
  end
  if tpm > 0 then
    redis.call('ZADD', tk, now, rid .. '|' .. est)
    redis.call('INCRBY', sk, est)
    redis.call('PEXPIRE', tk, win)
    redis.call('PEXPIRE', sk, win)
  end
  if conc > 0 then
    redis.call('ZADD', ck, now + lease, rid)
    redis.call('PEXPIRE', ck, lease)
  end
end
return {1, 0, '', 0}
"""

# KEYS: 2 per bucket (tok, toksum); ARGV: rid, actual, window_ms, then reserved per bucket
RECONCILE_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local win = tonumber(ARGV[3])
for b = 0, #KEYS / 2 - 1 do
  local tk, sk = KEYS[b*2+1], KEYS[b*2+2]
  local est = tonumber(ARGV[4+b])
  local member = rid .. '|' .. est
  local score = redis.call('ZSCORE', tk, member)
  if score then
    redis.call('ZREM', tk, member)
    redis.call('ZADD', tk, score, rid .. '|' .. actual)
    redis.call('INCRBY', sk, actual - est)
  elseif actual > est then
    -- the reservation already left the window: charge the overrun now
    redis.call('ZADD', tk, now, rid .. '+|' .. (actual - est))
    redis.call('INCRBY', sk, actual - est)
  end
  redis.call('PEXPIRE', tk, win)
  redis.call('PEXPIRE', sk, win)
end
return 1
"""


class RedisBackend:
    def __init__(self, redis: Any, window: float, lease: float) -> None:
        self.redis = redis
        self.win_ms = int(window * 1000)
        self.lease_ms = int(lease * 1000)
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._reconcile = redis.register_script(RECONCILE_LUA)

    async def acquire(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int]) -> tuple[bool, float, str, int]:
        keys: list[str] = []
        args: list[Any] = [rid, self.win_ms, self.lease_ms]
        for b, est in zip(buckets, reserved, strict=True):
            keys += [b.base + "req", b.base + "tok", b.base + "toksum", b.base + "conc"]
            args += [b.rpm, b.tpm, b.concurrent, est]
        ok, wait_ms, reason, idx = await self._acquire(keys=keys, args=args)
        reason = reason.decode() if isinstance(reason, bytes) else reason
        wait = CONCURRENCY_RETRY_AFTER if int(wait_ms) < 0 else int(wait_ms) / 1000
        return bool(int(ok)), wait, reason, int(idx) - 1

    async def reconcile(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int], actual: int) -> None:
        keys: list[str] = []
        args: list[Any] = [rid, actual, self.win_ms]
        for b, est in zip(buckets, reserved, strict=True):
            if b.tpm:
                keys += [b.base + "tok", b.base + "toksum"]
                args.append(est)
        if keys:
            await self._reconcile(keys=keys, args=args)

    async def release(self, rid: str, buckets: Sequence[Bucket]) -> None:
        conc = [b for b in buckets if b.concurrent]
        if not conc:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for b in conc:
                p.zrem(b.base + "conc", rid)
            await p.execute()

    async def ping(self) -> None:
        await self.redis.ping()


@dataclass(slots=True)
class _MemBucket:
    req: deque[float] = field(default_factory=deque)
    tok: dict[str, tuple[float, int]] = field(default_factory=dict)  # insertion-ordered by time
    tok_sum: int = 0  # sum of tok's counts, kept so admission is O(1) (the Redis backend's toksum)
    conc: set[str] = field(default_factory=set)


class MemoryBackend:
    """Same semantics in one process (no Redis configured): one replica only."""

    def __init__(self, window: float, clock: Any = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._b: dict[str, _MemBucket] = {}

    def _get(self, base: str, now: float) -> _MemBucket:
        mb = self._b.setdefault(base, _MemBucket())
        cutoff = now - self.window
        while mb.req and mb.req[0] <= cutoff:
            mb.req.popleft()
        while mb.tok:  # time-ordered: expired entries are at the front
            rid, (t, n) = next(iter(mb.tok.items()))
            if t > cutoff:
                break
            del mb.tok[rid]
            mb.tok_sum -= n
        return mb

    async def acquire(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int]) -> tuple[bool, float, str, int]:
        now = self.clock()
        for i, (b, est) in enumerate(zip(buckets, reserved, strict=True)):
            mb = self._get(b.base, now)
            if b.rpm and len(mb.req) >= b.rpm:
                return False, mb.req[len(mb.req) - b.rpm] + self.window - now, "rpm", i
            if b.tpm:
                total = mb.tok_sum
                if total + est > b.tpm:
                    wait = self.window
                    for t, n in mb.tok.values():
                        total -= n
                        if total + est <= b.tpm:
                            wait = t + self.window - now
                            break
                    return False, wait, "tpm", i
            if b.concurrent and len(mb.conc) >= b.concurrent:
                return False, CONCURRENCY_RETRY_AFTER, "concurrent", i
        for b, est in zip(buckets, reserved, strict=True):
            mb = self._b[b.base]
            if b.rpm:
                mb.req.append(now)
            if b.tpm:
                mb.tok[rid] = (now, est)
                mb.tok_sum += est
            if b.concurrent:
                mb.conc.add(rid)
        return True, 0.0, "", -1

    async def reconcile(self, rid: str, buckets: Sequence[Bucket], reserved: Sequence[int], actual: int) -> None:
        now = self.clock()
        for b, est in zip(buckets, reserved, strict=True):
            if not b.tpm:
                continue
            mb = self._get(b.base, now)
            if rid in mb.tok:
                t, old = mb.tok[rid]
                mb.tok[rid] = (t, actual)
                mb.tok_sum += actual - old
            elif actual > est:
                mb.tok[rid + "+"] = (now, actual - est)
                mb.tok_sum += actual - est

    async def release(self, rid: str, buckets: Sequence[Bucket]) -> None:
        for b in buckets:
            if b.concurrent and b.base in self._b:
                self._b[b.base].conc.discard(rid)

    async def ping(self) -> None:
        return None


class RateLimiter:
    """``check`` -> ``Decision``; ``acquire`` raises on deny; then ``record_tokens`` and ``release``."""

    def __init__(
        self,
        settings: RateLimitSettings,
        backend: Backend,
        *,
        prefix: str = "gatehouse:",
        metrics: Metrics | None = None,
        distributed: bool = True,
        op_timeout: float = 0.5,
        probe_interval: float = 1.0,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self._bucket_cache: dict[tuple[str, str, tuple[str, ...]], tuple[Bucket, ...]] = {}
        self.backend = backend
        self.prefix = prefix + "rl:"
        self.distributed = distributed
        self.op_timeout = op_timeout
        self.probe_interval = probe_interval
        self.max_body_bytes = max_body_bytes
        m = metrics or Metrics()
        self._errors = m.counter("ratelimit_redis_errors_total", "Rate limiter Redis failures by operation", ("op",))
        self._redis_up = m.gauge("redis_up", "1 while the rate limiter reaches Redis", (), multiprocess_mode="min")
        self._decisions = m.counter("ratelimit_decisions_total", "Rate limit decisions by result and limit", ("result", "limit"))
        for op in ("check", "record_tokens", "release", "probe"):
            self._errors.labels(op)  # exported as 0 from the start, so rate() and increase() see the first error
        self._redis_up.set(1)
        self.redis_up = True
        self._last_log = 0.0
        self._suppressed = 0
        self._probe: asyncio.Task[bool] | None = None  # one-shot probe scheduled by ``healthy``
        self._loop: asyncio.Task[None] | None = None  # ``start()``'s periodic probe

    @property
    def healthy(self) -> bool:
        """Readiness: False while Redis is down and failures close (503). With
        ``on_redis_error: open`` the replica still serves, so it stays ready;
        ``gatehouse_redis_up`` and the alert show the degradation.

        Reading it while Redis is down schedules one background probe (if none
        is running), so readiness recovers without traffic even when nobody
        called ``start()``."""
        if not self.redis_up and self.distributed and (self._probe is None or self._probe.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                self._probe = asyncio.get_running_loop().create_task(self.probe(), name="ratelimit-probe-once")
        return self.redis_up or self.settings.on_redis_error == "open"

    def buckets(self, caller: Caller) -> tuple[Bucket, ...]:
        # the same for every request of a key: computed once (callers come from a fixed key set)
        ck = (caller.key_id, caller.tenant, caller.scopes)
        cached = self._bucket_cache.get(ck)
        if cached is None:
            if len(self._bucket_cache) > 10_000:
                self._bucket_cache.clear()
            cached = self._bucket_cache[ck] = self._buckets(caller)
        return cached

    def _buckets(self, caller: Caller) -> tuple[Bucket, ...]:
        over = parse_limit_scopes(caller.scopes)
        s = self.settings
        out = []
        key = Bucket(
            f"{self.prefix}key:{caller.key_id}:",
            "key",
            over.get("rpm", s.requests_per_minute or 0),
            over.get("tpm", s.tokens_per_minute or 0),
            over.get("concurrent", s.concurrent or 0),
        )
        if key.rpm or key.tpm or key.concurrent:
            out.append(key)
        ten = Bucket(
            f"{self.prefix}tenant:{caller.tenant}:",
            "tenant",
            over.get("tenant_rpm", 0),
            over.get("tenant_tpm", 0),
            over.get("tenant_concurrent", 0),
        )
        if ten.rpm or ten.tpm or ten.concurrent:
            out.append(ten)
        return tuple(out)

    async def check(self, caller: Caller, estimated_tokens: int = 0, request_id: str | None = None) -> Decision:
        buckets = self.buckets(caller)
        if not buckets:
            return Decision(True)
        rid = uuid.uuid4().hex  # own id: request ids are client-influenced
        reserved = tuple(b.reserve(estimated_tokens) for b in buckets)
        try:
            async with asyncio.timeout(self.op_timeout):
                ok, wait, reason, idx = await self.backend.acquire(rid, buckets, reserved)
        except Exception as exc:
            self._failed("check", exc)
            if self.settings.on_redis_error == "open":
                self._decisions.labels("degraded", "redis").inc()
                return Decision(True, reason="redis", degraded=True)
            self._decisions.labels("unavailable", "redis").inc()
            raise GatewayError(ErrorKind.UNAVAILABLE, "rate limiter unavailable (Redis); try again shortly") from exc
        self._ok()
        if not ok:
            self._decisions.labels("denied", reason).inc()
            return Decision(False, max(wait, 0.001), reason, buckets[idx].scope)
        self._decisions.labels("allowed", "").inc()
        return Decision(True, lease=Lease(rid, buckets, reserved))

    async def acquire(self, caller: Caller, estimated_tokens: int = 0, request_id: str | None = None) -> Lease | None:
        """``check`` that raises ``GatewayError`` (429 with Retry-After, or 503)."""
        d = await self.check(caller, estimated_tokens, request_id)
        d.raise_if_denied()
        return d.lease

    async def record_tokens(self, lease: Lease | None, actual_tokens: int) -> None:
        """Reconcile the reservation with actual usage; never raises."""
        if lease is None or lease.reconciled or not any(b.tpm for b in lease.buckets):
            return
        lease.reconciled = True
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.backend.reconcile(lease.rid, lease.buckets, lease.reserved, max(int(actual_tokens), 0))
            self._ok()
        except Exception as exc:
            self._failed("record_tokens", exc)

    async def release(self, lease: Lease | None) -> None:
        """Free the concurrency slot; idempotent, never raises (the lease expires anyway)."""
        if lease is None or lease.released:
            return
        lease.released = True
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.backend.release(lease.rid, lease.buckets)
            self._ok()
        except Exception as exc:
            self._failed("release", exc)

    async def probe(self) -> bool:
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.backend.ping()
        except Exception as exc:
            self._failed("probe", exc)
            return False
        self._ok()
        return True

    def start(self) -> None:
        """Optional: probe Redis every ``probe_interval`` (keeps ``gatehouse_redis_up`` fresh when idle)."""
        if self._loop is None and self.distributed:
            self._loop = asyncio.get_running_loop().create_task(self._probe_loop(), name="ratelimit-probe")

    async def _probe_loop(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.probe_interval)

    async def aclose(self) -> None:
        for task in (self._loop, self._probe):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop = self._probe = None

    # --- ASGI admission (the app's RateLimit middleware calls this) -------------------

    async def admit(self, scope: dict[str, Any], receive: Any, send: Any, caller: Caller, app: Any) -> None:
        """Check, run ``app``, then reconcile tokens and free the slot.

        Only when a tpm limit applies is the body read here (to estimate the
        reservation) and replayed to ``app``; actual usage comes from the
        traffic record (``scope["state"]["record"]``) after the response.
        """
        buckets = self.buckets(caller)
        if not buckets:
            await app(scope, receive, send)
            return
        est = 0
        if any(b.tpm for b in buckets):
            parsed, receive = await peek_json(scope, receive, self.max_body_bytes)
            est = estimate_tokens(parsed) if isinstance(parsed, dict) else 0  # not JSON: reserve nothing
        lease = await self.acquire(caller, est)
        try:
            await app(scope, receive, send)
        finally:
            record = scope.get("state", {}).get("record")
            actual = 0
            if record is not None:
                actual = record.total_tokens or (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            # shielded: a client disconnect must not leak the slot or the reservation
            await asyncio.shield(self._settle(lease, actual))

    async def _settle(self, lease: Lease | None, actual: int) -> None:
        await self.record_tokens(lease, actual)
        await self.release(lease)

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors.labels(op).inc()
        self._redis_up.set(0)
        now = time.monotonic()
        if self.redis_up or now - self._last_log >= LOG_EVERY:
            log.error(
                "rate limiter: Redis %s failed (%s: %s); on_redis_error=%s -> %s%s",
                op,
                type(exc).__name__,
                exc,
                self.settings.on_redis_error,
                "admitting unlimited" if self.settings.on_redis_error == "open" else "answering 503",
                f" ({self._suppressed} more failures since last log)" if self._suppressed else "",
            )
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        self.redis_up = False

    def _ok(self) -> None:
        if not self.redis_up:
            log.warning("rate limiter: Redis reachable again; limits enforced")
            self._redis_up.set(1)
            self._suppressed = 0
        self.redis_up = True


def make_limiter(settings: Settings, redis: Any = None, metrics: Metrics | None = None) -> RateLimiter:
    """Redis-backed when a client is given, else in-process (logged: one replica only)."""
    rl = settings.rate_limits
    kw: dict[str, Any] = {"metrics": metrics, "max_body_bytes": settings.server.max_body_bytes}
    if redis is not None:
        return RateLimiter(rl, RedisBackend(redis, WINDOW_SECONDS, LEASE_SECONDS), prefix=settings.redis.key_prefix, **kw)
    if rl.requests_per_minute or rl.tokens_per_minute or rl.concurrent:
        log.warning("rate limits are per process: redis.url is not set, so each replica enforces its own limits")
    return RateLimiter(rl, MemoryBackend(WINDOW_SECONDS), distributed=False, **kw)


async def build_limiter(services: Any) -> RateLimiter:
    """The app's factory: ``services.settings``, ``.redis`` (or None), ``.metrics``."""
    return make_limiter(services.settings, services.redis, services.metrics)


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Cheap upper-ish estimate for the reservation: ~4 chars a token plus max_tokens."""
    chars = 0
    for m in body.get("messages") or ():
        c = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(len(t) for p in c if isinstance(p, Mapping) and isinstance(t := p.get("text"), str))
    p = body.get("prompt")
    if isinstance(p, str):
        chars += len(p)
    elif isinstance(p, list):
        chars += sum(len(x) for x in p if isinstance(x, str))
    inp = body.get("input")
    if isinstance(inp, str):
        chars += len(inp)
    elif isinstance(inp, list):
        chars += sum(len(x) for x in inp if isinstance(x, str))
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    out = out if isinstance(out, int) and out > 0 else 256
    n = body.get("n")
    n = n if isinstance(n, int) and n > 0 else 1
    return chars // 4 + 1 + out * n

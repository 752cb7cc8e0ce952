"""Routing: public model name -> weighted targets (A/B arms) -> ordered fallbacks.

An arm is chosen by weight; with ``sticky`` routes the choice is a hash of the
caller key (the request's ``user`` or the ``x-gatehouse-session`` header), so a
user stays on one arm. A failing target is retried with jittered exponential
backoff (honouring ``Retry-After``), then the fallbacks are tried in order.
Each target has a circuit breaker: open after N consecutive failures, one
half-open probe after ``reset_seconds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import RouteSettings, TargetSettings
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import Metrics
from gateway.model import Chunk, Reply
from gateway.providers import Provider, StreamReply, UpstreamFailure
from gateway.providers.base import Payload
from gateway.types import Endpoint


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (reset_seconds) -> half-open probe."""

    def __init__(self, failures: int, reset_seconds: float, on_change: Callable[[bool], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.on_change = on_change
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_seconds else "open"

    def allow(self) -> bool:
        st = self.state
        if st == "closed":
            return True
        if st == "half-open" and not self.probing:
            self.probing = True  # exactly one request probes the target
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.probing = False
        if self.opened_at is not None:
            self.opened_at = None
            self.on_change(False)

    def failure(self) -> None:
        self.consecutive += 1
        if self.probing or (self.opened_at is None and self.consecutive >= self.threshold):
            was_open = self.opened_at is not None
            self.opened_at = self.clock()
            if not was_open:
                self.on_change(True)
        self.probing = False


@dataclass(slots=True)
class Arm:
    target: TargetSettings
    provider: Provider
    breaker: CircuitBreaker
    variant: str

    @property
    def name(self) -> str:
        return self.target.key


class Route:
    def __init__(self, settings: RouteSettings, arms: list[Arm], fallbacks: list[Arm]) -> None:
        self.settings = settings
        self.name = settings.name
        self.arms = [a for a in arms if a.target.weight > 0] or arms
        self.fallbacks = fallbacks
        total = sum(a.target.weight for a in self.arms) or float(len(self.arms))
        acc, self._cum = 0.0, []
        for a in self.arms:
            acc += (a.target.weight or 1.0) / total
            self._cum.append(acc)
        caps: set[str] = set()
        for a in arms:
            caps |= a.provider.capabilities
        self.capabilities = frozenset(caps)

    def choose(self, sticky_key: str | None) -> Arm:
        if len(self.arms) == 1:
            return self.arms[0]
        if sticky_key and self.settings.sticky:
            digest = hashlib.blake2b(f"{self.name}\x00{sticky_key}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64
        else:
            point = random.random()
        for arm, edge in zip(self.arms, self._cum, strict=True):
            if point < edge:
                return arm
        return self.arms[-1]

    def plan(self, sticky_key: str | None) -> list[Arm]:
        first = self.choose(sticky_key)
        return [first, *(a for a in self.fallbacks if a is not first)]


def backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after
    # "full jitter": uniform in [0, min(cap, base * 2**attempt)]
    return random.uniform(0, min(cap, base * (2**attempt)))


FAILURE_TO_ERROR = {
    "timeout": ErrorKind.UPSTREAM_TIMEOUT,
    "connect": ErrorKind.UPSTREAM_CONNECT,
    "drop": ErrorKind.UPSTREAM_ERROR,
    "status": ErrorKind.UPSTREAM_ERROR,
    "circuit": ErrorKind.CIRCUIT_OPEN,
}


def to_gateway_error(f: UpstreamFailure, target: str) -> GatewayError:
    if f.kind in ("status", "unsupported") and f.status is not None and 400 <= f.status < 500 and f.status != 429:
        # the upstream refused the request itself: pass its message and status on
        err = (f.body or {}).get("error") if isinstance(f.body, dict) else None
        param = err.get("param") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        return GatewayError(ErrorKind.UPSTREAM_CLIENT, f.message, status=f.status, param=param, code=code)
    if f.kind == "status" and f.status == 429:
        headers = {"retry-after": str(int(f.retry_after or 1))}
        return GatewayError(ErrorKind.RATE_LIMITED, f"upstream {target} is rate limiting: {f.message}", headers=headers)
    kind = FAILURE_TO_ERROR.get(f.kind, ErrorKind.UPSTREAM_ERROR)
    return GatewayError(kind, f"upstream {target} failed: {f.message}")


class Attempt:
    """What happened while executing a plan; read back into the traffic record."""

    __slots__ = ("arm", "attempts", "upstream_seconds")

    def __init__(self) -> None:
        self.arm: Arm | None = None
        self.attempts = 0
        self.upstream_seconds = 0.0


class Router:
    def __init__(self, routes: dict[str, Route], metrics: Metrics, tracing: Any = None) -> None:
        self.routes = routes
        self.metrics = metrics
        self.tracing = tracing  # gateway.tracing.Tracing: a span per attempt (None: off)

    def get(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is None:
            available = ", ".join(sorted(self.routes)) or "(none configured)"
            raise GatewayError(
                ErrorKind.NOT_FOUND, f"The model `{model}` does not exist. Available models: {available}", param="model"
            )
        return route

    async def complete(self, route: Route, endpoint: Endpoint, body: Payload, sticky: str | None, att: Attempt) -> Reply | dict[str, Any]:
        async def call(arm: Arm) -> Reply | dict[str, Any]:
            async with asyncio.timeout(arm.target.timeouts.total):
                return await arm.provider.complete(endpoint, body)

        return await self._run(route, endpoint, sticky, att, call)

    async def open_stream(
        self, route: Route, endpoint: Endpoint, body: Payload, sticky: str | None, att: Attempt
    ) -> tuple[StreamReply, list[Chunk]]:
        """Open a stream and read its first events; fallbacks apply until they arrive."""

        async def call(arm: Arm) -> tuple[StreamReply, list[Chunk]]:
            async with asyncio.timeout(arm.target.timeouts.first_token):
                reply = await arm.provider.stream(endpoint, body)
                try:
                    first = await reply.events.__anext__()
                except StopAsyncIteration:
                    await reply.aclose()
                    raise UpstreamFailure("drop", "upstream closed the stream before any event") from None
                except BaseException:
                    await reply.aclose()
                    raise
                return reply, first

        return await self._run(route, endpoint, sticky, att, call)

    async def _run(self, route: Route, endpoint: Endpoint, sticky: str | None, att: Attempt, call: Callable[[Arm], Any]) -> Any:
        retries = route.settings.retries
        last: UpstreamFailure | None = None
        last_target = route.name
        capable = [a for a in route.plan(sticky) if _capable(a, endpoint)]
        if not capable:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"model `{route.name}` does not support {endpoint}", param="model")
        for arm in capable:
            last_target = arm.name
            for attempt in range(retries.attempts + 1):
                if not arm.breaker.allow():
                    self.metrics.upstream_errors.labels(arm.name, "circuit_open").inc()
                    last = UpstreamFailure("circuit", f"circuit breaker for {arm.name} is open")
                    break
                att.arm = arm
                att.attempts += 1
                span = None if self.tracing is None else self.tracing.attempt(
                    arm, endpoint, attempt, any(a is arm for a in route.fallbacks))
                t0 = time.perf_counter()
                try:
                    result = await call(arm)
                except TimeoutError:
                    failure = UpstreamFailure("timeout", f"no answer within the timeout of {arm.name}")
                except UpstreamFailure as f:
                    failure = f
                except BaseException as exc:  # cancelled (client left) or our bug: still end the span
                    if span is not None:
                        self.tracing.end_attempt(span, UpstreamFailure("cancelled", type(exc).__name__))
                    raise
                else:
                    att.upstream_seconds += time.perf_counter() - t0
                    if span is not None:
                        self.tracing.end_attempt(span, None)
                    arm.breaker.success()
                    return result
                att.upstream_seconds += time.perf_counter() - t0
                if span is not None:
                    self.tracing.end_attempt(span, failure)
                self.metrics.upstream_errors.labels(arm.name, failure.kind).inc()
                if not failure.retryable:
                    arm.breaker.success()  # the target answered; the request was wrong
                    raise to_gateway_error(failure, arm.name)
                arm.breaker.failure()
                last = failure
                if failure.kind == "timeout":
                    break  # a slow target stays slow: go to the next one
                if attempt >= retries.attempts:
                    break
                if failure.retry_after is not None and failure.retry_after > retries.honour_retry_after_max:
                    break
                await asyncio.sleep(backoff(attempt, retries.backoff_base, retries.backoff_max, failure.retry_after))
        assert last is not None
        raise to_gateway_error(last, last_target)


def _capable(arm: Arm, endpoint: Endpoint) -> bool:
    return endpoint in arm.provider.capabilities


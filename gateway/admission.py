"""Admission control for guardrail checks: under overload, shed; never disarm.

Every text a request wants checked takes a slot until its checks end. A new request is
refused at once with 503 ``overloaded`` and ``Retry-After`` (in the door's error shape),
instead of queueing behind the model until its checks time out (and a fail-open rule
lets it through unchecked), when either

- the slots are taken (``capacity`` texts in flight), or
- **it could not be checked in time**: the texts ahead of it plus its own, at the rate the
  checks have been clearing texts, would take longer than its ``deadline`` (the shortest
  check timeout of the rules it meets, times ``DEADLINE_SHARE``). The rate is measured, not
  configured: texts released per second while the checks had a backlog (at least
  ``SATURATED`` texts in flight), as an exponentially weighted average, so it follows the
  scorer on this machine under this load. Time with only a few texts in flight measures the
  checks' fixed latency, not their throughput (a one-text request takes tens of ms whatever
  the rate), so it does not count; until a backlog has been seen there is no rate and only
  the capacity sheds.

A request arriving when nothing is in flight always runs (the caps in ``limits:`` bound
it, and it refreshes the rate), so no valid request is refused forever.

Output checks (whole replies, stream windows) always get their slots: the upstream
already ran, and refusing would waste it; they still count, so inputs shed sooner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.errors import ErrorKind, GatewayError

DEADLINE_SHARE = 0.8  # of the check timeout: the estimate is an average, leave room for the noise
RATE_DECAY = 0.7  # weight of the history in the rate average at each release
MIN_BUSY_SECONDS = 0.01  # busy time a rate sample needs (shorter: accumulated into the next)
SATURATED = 32  # texts in flight from which the checks run at their throughput (a scorer batch)


class CheckAdmission:
    def __init__(
        self,
        capacity: int,
        retry_after: int = 1,
        *,
        gauge: Any = None,
        shed: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        self.in_flight = 0
        self._gauge = gauge
        self._shed = shed
        self.clock = clock
        # the measured rate: decayed sums of texts released and busy seconds
        self._texts = 0.0
        self._busy = 0.0
        self._pending_texts = 0  # released since the last sample
        self._pending_busy = 0.0
        self._busy_since: float | None = None  # the last change of in_flight while it was > 0

    # -- the rate ------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """Texts the checks clear per second with a backlog, or None before the first sample."""
        return self._texts / self._busy if self._busy > 0 else None

    def drain_seconds(self, texts: int = 0) -> float | None:
        """How long the texts in flight plus ``texts`` more would take to clear at the measured rate."""
        rate = self.rate
        return None if rate is None else (self.in_flight + texts) / rate

    def _released(self, texts: int, backlog: int) -> None:
        if backlog < SATURATED:
            return  # released from a short queue: latency, not throughput
        self._pending_texts += texts
        if self._pending_busy < MIN_BUSY_SECONDS:
            return
        self._texts = RATE_DECAY * self._texts + self._pending_texts
        self._busy = RATE_DECAY * self._busy + self._pending_busy
        self._pending_texts = 0
        self._pending_busy = 0.0

    def _set(self, delta: int) -> None:
        now = self.clock()
        if self._busy_since is not None and self.in_flight >= SATURATED:  # time with a backlog
            self._pending_busy += now - self._busy_since
        self.in_flight += delta
        self._busy_since = now if self.in_flight > 0 else None
        if self._gauge is not None:
            self._gauge.set(self.in_flight)

    # -- admission -----------------------------------------------------------------------

    def _refuse(self, why: str, retry_after: int, headers: dict[str, str] | None) -> GatewayError:
        if self._shed is not None:
            self._shed.inc()
        return GatewayError(
            ErrorKind.OVERLOADED,
            f"The gateway's guardrail checks are {why}; retry after {retry_after} s. "
            "Requests are refused, never passed unchecked.",
            headers={**(headers or {}), "retry-after": str(retry_after)},
        )

    @contextmanager
    def admit(
        self,
        texts: int,
        *,
        force: bool = False,
        deadline: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[None]:
        """Hold ``texts`` slots for the block; raise 503 when they are not free, or when the
        checks could not finish them within ``deadline`` seconds (unless ``force``)."""
        n = min(texts, self.capacity)
        if not force and self.in_flight > 0:
            if self.in_flight + n > self.capacity:
                raise self._refuse(f"at capacity ({self.capacity} texts in flight)", self.retry_after, headers)
            drain = self.drain_seconds(texts)
            if deadline is not None and drain is not None and drain > deadline * DEADLINE_SHARE:
                # Retry-After: when the texts ahead of it should have cleared
                wait = max(self.retry_after, math.ceil(self.in_flight / (self.rate or 1.0)))
                raise self._refuse(
                    f"behind: {self.in_flight} texts ahead of this request's {texts} would take ~{drain:.1f} s "
                    f"at the measured {self.rate:.0f} texts/s, longer than its {deadline:g} s check timeout",
                    wait, headers,
                )
        self._set(n)
        try:
            yield
        finally:
            backlog = self.in_flight
            self._set(-n)
            self._released(n, backlog)

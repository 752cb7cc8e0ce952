"""Admission control for guardrail checks: under overload, shed; never disarm.

Every text a request wants checked takes a slot until its checks end. When the slots
are taken, a new request is refused at once with 503 ``overloaded`` and ``Retry-After``
(in the door's error shape), instead of queueing behind the model until its checks
time out and a fail-open rule lets it through unchecked. A request larger than the
whole capacity still runs when nothing else is in flight (the caps in ``limits:``
bound it), so no valid request is refused forever.

Output checks (whole replies, stream windows) always get their slots: the upstream
already ran, and refusing would waste it; they still count, so inputs shed sooner.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.errors import ErrorKind, GatewayError


class CheckAdmission:
    def __init__(self, capacity: int, retry_after: int = 1, *, gauge: Any = None, shed: Any = None) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        self.in_flight = 0
        self._gauge = gauge
        self._shed = shed

    def _set(self, delta: int) -> None:
        self.in_flight += delta
        if self._gauge is not None:
            self._gauge.set(self.in_flight)

    @contextmanager
    def admit(self, texts: int, *, force: bool = False, headers: dict[str, str] | None = None) -> Iterator[None]:
        """Hold ``texts`` slots for the block; raise 503 when they are not free (unless ``force``)."""
        n = min(texts, self.capacity)
        if not force and self.in_flight > 0 and self.in_flight + n > self.capacity:
            if self._shed is not None:
                self._shed.inc()
            raise GatewayError(
                ErrorKind.OVERLOADED,
                f"The gateway's guardrail checks are at capacity ({self.capacity} texts in flight); "
                f"retry after {self.retry_after} s. Requests are refused, never passed unchecked.",
                headers={**(headers or {}), "retry-after": str(self.retry_after)},
            )
        self._set(n)
        try:
            yield
        finally:
            self._set(-n)

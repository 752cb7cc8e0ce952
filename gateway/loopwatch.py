"""``gatehouse_event_loop_lag_seconds``: how late the event loop wakes up.

A task sleeps ``interval`` seconds and measures how much later than asked it woke; the
difference is time the loop spent on something else (CPU work that should have gone to
a worker thread). While the loop is stuck nothing can be sampled or scraped, so the gauge
holds the worst sample of the last ``window`` seconds: a stall shows up on the next
scrape after it ends, not only if a scrape happens to land within one interval of it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any


class LoopLagMonitor:
    def __init__(self, gauge: Any, interval: float = 0.1, window: float = 30.0) -> None:
        self.gauge = gauge
        self.interval = interval
        self.window = window
        self.samples: collections.deque[tuple[float, float]] = collections.deque()
        self.worst = 0.0

    def observe(self, now: float, lag: float) -> float:
        """Add one sample; return (and publish) the worst lag still in the window."""
        self.samples.append((now, lag))
        while self.samples and self.samples[0][0] < now - self.window:
            self.samples.popleft()
        self.worst = max(lag for _, lag in self.samples)
        self.gauge.set(self.worst)
        return self.worst

    async def run(self) -> None:
        clock = time.monotonic
        while True:
            t0 = clock()
            await asyncio.sleep(self.interval)
            now = clock()
            self.observe(now, max(0.0, now - t0 - self.interval))

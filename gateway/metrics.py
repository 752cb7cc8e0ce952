"""Prometheus metrics, ``gatehouse_`` prefix, correct under ``--workers N``.

With one worker the metrics live in a private registry. With several,
``gatehouse serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start;
every worker then writes its samples to mmap files there and ``/metrics``
aggregates them with ``MultiProcessCollector``, so any worker answers for all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "gatehouse_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Owns the registry and the core metrics; features add theirs via the helpers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        self._made: dict[str, object] = {}
        c, h, g = self.counter, self.histogram, self.gauge
        self.requests = c("requests_total", "Requests by public model, target and HTTP status", ("model", "target", "status"))
        self.duration = h("request_duration_seconds", "Request latency seen by the client", ("model",), LATENCY_BUCKETS)
        self.ttft = h("time_to_first_token_seconds", "Time to first streamed token", ("model",), LATENCY_BUCKETS)
        self.overhead = h("overhead_seconds", "Time spent in the gateway, excluding upstream wait", ("model",), OVERHEAD_BUCKETS)
        self.tokens = c("tokens_total", "Tokens by direction (prompt, completion)", ("direction",))
        self.upstream_errors = c("upstream_errors_total", "Upstream failures by target and kind", ("target", "kind"))
        self.inflight = g("inflight_requests", "Requests in progress", (), multiprocess_mode="livesum")
        self.circuit_open = g("circuit_open", "1 while a target's circuit breaker is open", ("target",), multiprocess_mode="max")
        self.log_dropped = c("log_records_dropped_total", "Traffic records dropped because the log queue was full", ())
        self.log_errors = c("log_sink_errors_total", "Traffic log sink write failures (records kept and retried)", ("sink",))
        self._tok_prompt = self.tokens.labels("prompt")
        self._tok_completion = self.tokens.labels("completion")
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def observe_request(
        self, model: str, target: str, status: int, seconds: float, overhead: float | None,
        ttft: float | None, prompt_tokens: int | None, completion_tokens: int | None,
    ) -> None:
        """Everything recorded at the end of a request; labelled children are cached
        (``labels()`` costs a lock and a dict build each call, on every request)."""
        key = (model, target, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, target, str(status)),
                self.duration.labels(model),
                self.overhead.labels(model),
                self.ttft.labels(model),
            )
            self._children[key] = children
        req, dur, ovh, ttf = children
        req.inc()
        dur.observe(seconds)
        if overhead is not None:
            ovh.observe(overhead)
        if ttft is not None:
            ttf.observe(ttft)
        if prompt_tokens:
            self._tok_prompt.inc(prompt_tokens)
        if completion_tokens:
            self._tok_completion.inc(completion_tokens)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._get(name, lambda full: Counter(full, doc, list(labels), registry=self._reg()))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None) -> Histogram:
        b = tuple(buckets) if buckets else Histogram.DEFAULT_BUCKETS
        return self._get(name, lambda full: Histogram(full, doc, list(labels), registry=self._reg(), buckets=b))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), multiprocess_mode: str = "max") -> Gauge:
        mode: Any = multiprocess_mode  # one of prometheus_client's Literal modes
        return self._get(name, lambda full: Gauge(full, doc, list(labels), registry=self._reg(), multiprocess_mode=mode))

    def _reg(self) -> CollectorRegistry | None:
        # in multiprocess mode values go to mmap files; the collector reads them back
        return None if self.multiprocess else self.registry

    def _get(self, name: str, make):
        full = name if name.startswith(PREFIX) else PREFIX + name
        if full not in self._made:
            self._made[full] = make(full)
        return self._made[full]  # type: ignore[return-value]

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Online monitoring: consume the traffic stream, export rolling safety statistics to Prometheus.

Sources: a Redis Stream read through a consumer group (``XREADGROUP``/``XACK``;
the gateway's ``RedisStreamSink`` writes each record as JSON in the ``record``
field), or a JSONL traffic log followed like ``tail -F`` (rotation-aware).

Per (model, variant) the monitor keeps the last ``window`` records and, per
(model, variant, category), the last ``window`` guardrail scores. On every
scrape its collector reports, on its own registry:

- ``gatehouse_monitor_safety_score{model,variant,category,quantile}`` (0.5/0.9/0.99)
- ``gatehouse_monitor_block_rate{model,variant}`` / ``..._flag_rate`` over the window
  (share of requests with at least one ``block`` / ``flag`` verdict)
- ``gatehouse_monitor_category_action_rate{model,variant,category,action}``
- ``gatehouse_monitor_records_total{model,variant}`` and ``..._window_size``
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("gatehouse.monitor")
QUANTILES = (0.5, 0.9, 0.99)


class _Window:
    def __init__(self, size: int) -> None:
        self.requests: deque[tuple[bool, bool]] = deque(maxlen=size)  # (blocked, flagged)
        self.total = 0


class TrafficMonitor:
    """Rolling per-model/variant safety statistics, exported by a Prometheus collector."""

    def __init__(self, *, window: int = 1000, registry: CollectorRegistry | None = None) -> None:
        self.window = window
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()  # the HTTP exporter scrapes from its own thread
        self._windows: dict[tuple[str, str], _Window] = {}
        self._scores: dict[tuple[str, str, str], deque[float]] = {}
        self._actions: dict[tuple[str, str, str], deque[str]] = {}
        self.processed = 0
        self.skipped = 0
        self.registry.register(_MonitorCollector(self))

    def ingest(self, rec: dict[str, Any]) -> None:
        if not isinstance(rec, dict) or "request_id" not in rec:
            self.skipped += 1
            return
        key = (str(rec.get("model") or "unknown"), str(rec.get("variant") or rec.get("target") or "default"))
        verdicts = [v for v in rec.get("verdicts") or [] if isinstance(v, dict)]
        blocked = any(v.get("action") == "block" for v in verdicts) or rec.get("error_kind") == "content_policy"
        flagged = any(v.get("action") == "flag" for v in verdicts)
        with self._lock:
            w = self._windows.setdefault(key, _Window(self.window))
            w.requests.append((blocked, flagged))
            w.total += 1
            for v in verdicts:
                cat = str(v.get("category") or "unknown")
                ck = (*key, cat)
                try:
                    score = float(v.get("score"))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    score = float("nan")
                if score == score:
                    self._scores.setdefault(ck, deque(maxlen=self.window)).append(score)
                self._actions.setdefault(ck, deque(maxlen=self.window)).append(str(v.get("action") or "pass"))
            self.processed += 1

    def snapshot(self) -> dict[str, Any]:
        """The exported numbers as a dict (for the CLI and tests)."""
        with self._lock:
            groups = {}
            for (model, variant), w in self._windows.items():
                n = len(w.requests)
                groups[f"{model}/{variant}"] = {
                    "total": w.total,
                    "window": n,
                    "block_rate": sum(b for b, _ in w.requests) / n if n else 0.0,
                    "flag_rate": sum(f for _, f in w.requests) / n if n else 0.0,
                }
            scores = {
                f"{m}/{v}/{c}": {str(q): float(np.quantile(list(d), q)) for q in QUANTILES}
                for (m, v, c), d in self._scores.items()
                if d
            }
        return {"processed": self.processed, "skipped": self.skipped, "groups": groups, "score_quantiles": scores}


class _MonitorCollector(Collector):
    def __init__(self, mon: TrafficMonitor) -> None:
        self.mon = mon

    def collect(self) -> Iterator[Any]:
        mon = self.mon
        q = GaugeMetricFamily("gatehouse_monitor_safety_score", "Rolling quantiles of guardrail scores", labels=["model", "variant", "category", "quantile"])
        block = GaugeMetricFamily("gatehouse_monitor_block_rate", "Share of requests blocked, rolling window", labels=["model", "variant"])
        flag = GaugeMetricFamily("gatehouse_monitor_flag_rate", "Share of requests flagged, rolling window", labels=["model", "variant"])
        wsize = GaugeMetricFamily("gatehouse_monitor_window_size", "Requests in the rolling window", labels=["model", "variant"])
        total = CounterMetricFamily("gatehouse_monitor_records", "Traffic records consumed", labels=["model", "variant"])
        cat = GaugeMetricFamily("gatehouse_monitor_category_action_rate", "Share of a category's verdicts per action, rolling window", labels=["model", "variant", "category", "action"])
        with mon._lock:
            for (model, variant), w in mon._windows.items():
                n = len(w.requests)
                block.add_metric([model, variant], sum(b for b, _ in w.requests) / n if n else 0.0)
                flag.add_metric([model, variant], sum(f for _, f in w.requests) / n if n else 0.0)
                wsize.add_metric([model, variant], n)
                total.add_metric([model, variant], w.total)
            for (model, variant, c), d in mon._scores.items():
                if d:
                    arr = np.fromiter(d, dtype=float)
                    for qq in QUANTILES:
                        q.add_metric([model, variant, c, str(qq)], float(np.quantile(arr, qq)))
            for (model, variant, c), acts in mon._actions.items():
                n = len(acts)
                for action in sorted(set(acts)):
                    cat.add_metric([model, variant, c, action], sum(a == action for a in acts) / n)
        yield from (q, block, flag, wsize, total, cat)


# --------------------------------------------------------------------------- sources


def decode_stream_entry(fields: dict[Any, Any]) -> dict[str, Any] | None:
    """A traffic record from a stream entry: the JSON in ``record`` (or ``data``/``json``)."""
    for k in ("record", "data", "json", b"record", b"data", b"json"):
        if k in fields:
            raw = fields[k]
            try:
                obj = json.loads(raw)
            except (TypeError, ValueError):
                return None
            return obj if isinstance(obj, dict) else None
    return None


async def consume_redis(
    monitor: TrafficMonitor,
    redis: Any,
    stream: str,
    *,
    group: str = "gatehouse-monitor",
    consumer: str | None = None,
    start_id: str = "$",
    block_ms: int = 1000,
    count: int = 256,
    max_records: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Read the stream through a consumer group until ``stop`` is set (or ``max_records`` consumed).

    The group is created on first use (``start_id="$"``: only new traffic; ``"0"``:
    from the beginning). Entries are acknowledged after they are ingested; on
    restart this consumer's pending entries are read first, so none are skipped.
    """
    from redis.exceptions import ResponseError

    consumer = consumer or f"{os.uname().nodename}-{os.getpid()}"
    try:
        await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    done = 0
    pending_first = True
    while not (stop and stop.is_set()) and (max_records is None or done < max_records):
        want = count if max_records is None else min(count, max_records - done)
        # "0" re-reads our own unacknowledged entries (after a crash), ">" new ones
        resp = await redis.xreadgroup(group, consumer, {stream: "0" if pending_first else ">"}, count=want, block=None if pending_first else block_ms)
        entries = resp[0][1] if resp else []
        if pending_first and not entries:
            pending_first = False
            continue
        ids = []
        for entry_id, fields in entries:
            if not fields:  # already deleted from the stream
                ids.append(entry_id)
                continue
            rec = decode_stream_entry(fields)
            if rec is None:
                monitor.skipped += 1
            else:
                monitor.ingest(rec)
            ids.append(entry_id)
            done += 1
        if ids:
            await redis.xack(stream, group, *ids)
    return done


async def consume_jsonl(monitor: TrafficMonitor, path: str | os.PathLike[str], *, from_start: bool = False, max_records: int | None = None, stop: asyncio.Event | None = None, poll: float = 0.25) -> int:
    n = 0
    from gatehouse_core.trafficlog import follow_jsonl  # the log's own reader

    async for rec in follow_jsonl(path, from_start=from_start, stop=stop, poll=poll):
        monitor.ingest(rec)
        n += 1
        if max_records is not None and n >= max_records:
            break
    return n


def start_exporter(monitor: TrafficMonitor, port: int = 9464, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` for the monitor's registry; returns (server, thread); stop with ``server.shutdown()``."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=monitor.registry)  # type: ignore[return-value]

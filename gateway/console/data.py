"""What the console pages read: live metrics, traffic records, feedback and the registry.

Everything here is read-only. The artifact registry and the feedback store belong to
``tuning/``, which the serving app never imports: their SQLite files are opened
read-only (``mode=ro``) over their documented schemas (``tuning/registry.py``:
``artifacts``/``links``; ``gatehouse_core/feedback.py``: ``feedback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from gatehouse_core.trafficlog import log_files, read_log_file
from gateway.trafficlog import encode, stream_key

# ---- metrics ---------------------------------------------------------------------------


@dataclass
class RouteStats:
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    p50_ms: float | None = None
    p99_ms: float | None = None
    by_target: dict[str, tuple[float, float]] = field(default_factory=dict)  # target -> (requests, 5xx)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus ``histogram_quantile``: linear inside the bucket holding the q-th observation."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def route_stats(metrics_text: str) -> dict[str, RouteStats]:
    """Per public model: requests, 5xx, p50/p99 of ``gatehouse_request_duration_seconds``."""
    out: dict[str, RouteStats] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == "gatehouse_requests":
            for s in fam.samples:
                if not s.name.endswith("_total"):
                    continue
                model, target, status = s.labels.get("model", ""), s.labels.get("target", ""), s.labels.get("status", "")
                st = out.setdefault(model, RouteStats())
                err = s.value if status.startswith("5") else 0.0
                st.requests += s.value
                st.errors += err
                r, e = st.by_target.get(target, (0.0, 0.0))
                st.by_target[target] = (r + s.value, e + err)
        elif fam.name == "gatehouse_request_duration_seconds":
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    buckets.setdefault(s.labels.get("model", ""), []).append((float(s.labels["le"]), s.value))
    for model, b in buckets.items():
        st = out.setdefault(model, RouteStats())
        p50, p99 = _quantile(b, 0.5), _quantile(b, 0.99)
        st.p50_ms = None if p50 is None else p50 * 1000
        st.p99_ms = None if p99 is None else p99 * 1000
    return out


def reload_counts(metrics_text: str) -> dict[str, float]:
    """``gatehouse_policy_reloads_total`` by result, when the guardrails registered it."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if "reload" in fam.name and fam.name.startswith("gatehouse_"):
            for s in fam.samples:
                if s.name.endswith("_total") and "result" in s.labels:
                    out[s.labels["result"]] = out.get(s.labels["result"], 0.0) + s.value
    return out


# ---- traffic ---------------------------------------------------------------------------

STATUS_CLASSES = ("2xx", "4xx", "5xx")
ACTIONS = ("block", "redact", "flag", "shadow", "pass")


@dataclass(frozen=True)
class TrafficFilter:
    since_minutes: int | None = None
    model: str = ""
    variant: str = ""
    tenant: str = ""
    status: str = ""  # "2xx" | "4xx" | "5xx" | an exact code
    action: str = ""
    category: str = ""
    limit: int = 100

    def matches(self, r: dict[str, Any], now: float) -> bool:
        if self.since_minutes is not None and float(r.get("ts_start") or 0) < now - self.since_minutes * 60:
            return False
        for key, want in (("model", self.model), ("variant", self.variant), ("tenant", self.tenant)):
            if want and str(r.get(key) or "") != want:
                return False
        if self.status:
            code = str(r.get("status") or "")
            if (self.status[0] + "xx" == self.status and not code.startswith(self.status[0])) or (
                self.status.isdigit() and code != self.status
            ):
                return False
        if self.action or self.category:
            vs = r.get("verdicts") or []
            if not any((not self.action or v.get("action") == self.action) and (not self.category or v.get("category") == self.category) for v in vs):
                return False
        return True


def verdict_summary(r: dict[str, Any]) -> str:
    """The strongest action any verdict took (``block`` > ``redact`` > ``flag`` > ``shadow``)."""
    actions = {v.get("action") for v in r.get("verdicts") or []}
    return next((a for a in ACTIONS if a in actions), "")


class TrafficReader:
    """Newest-first records from the configured sink, merged with this process's recent ones."""

    def __init__(self, rt: Any, scan: int) -> None:
        self.rt = rt
        self.scan = scan

    def _recent(self) -> list[dict[str, Any]]:
        traffic = self.rt.traffic
        return [orjson.loads(encode(r)) for r in traffic.recent()] if traffic is not None else []

    async def _sink_records(self) -> list[dict[str, Any]]:
        s = self.rt.settings
        cfg = s.traffic_log
        if cfg.sink == "jsonl":
            path = s.resolve_path(cfg.path)

            def read() -> list[dict[str, Any]]:
                tail: deque[dict[str, Any]] = deque(maxlen=self.scan)
                for f in log_files(path):
                    tail.extend(read_log_file(f))
                return list(tail)

            return await asyncio.to_thread(read)
        redis = self.rt.services.redis
        if cfg.sink == "redis" and redis is not None:
            entries = await redis.xrevrange(stream_key(s), count=self.scan)
            out = []
            for _, fields in reversed(entries):
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(fields.get(b"record", b"{}")))
            return out
        return []

    async def records(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for r in [*await self._sink_records(), *self._recent()]:
            rid = r.get("request_id")
            if isinstance(rid, str):
                seen[rid] = r
        return sorted(seen.values(), key=lambda r: float(r.get("ts_start") or 0), reverse=True)

    async def query(self, flt: TrafficFilter, tenant_scope: str | None) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """Matching records (newest first) and the values each filter can take."""
        now = time.time()
        rows = [r for r in await self.records() if tenant_scope is None or r.get("tenant") == tenant_scope]
        choices: dict[str, set[str]] = {"model": set(), "variant": set(), "tenant": set(), "category": set()}
        for r in rows:
            for k in ("model", "variant", "tenant"):
                if r.get(k):
                    choices[k].add(str(r[k]))
            choices["category"].update(str(v.get("category")) for v in r.get("verdicts") or [] if v.get("category"))
        hits = [r for r in rows if flt.matches(r, now)][: flt.limit]
        return hits, {k: sorted(v) for k, v in choices.items()}

    async def get(self, request_id: str) -> dict[str, Any] | None:
        for r in reversed(self._recent()):
            if r.get("request_id") == request_id:
                return r
        if self.rt.traffic is not None:
            return await self.rt.traffic.lookup(request_id)
        return None


# ---- read-only SQLite readers for tuning's files ------------------------------------------

def _ro(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def _rows(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = _ro(path)
    if conn is None:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def feedback_for(registry_dir: Path, request_id: str) -> list[dict[str, Any]]:
    """Feedback items about a request, or that preferred another answer over it."""
    rows = _rows(registry_dir / "feedback.db", "SELECT item FROM feedback WHERE request_id=? OR item LIKE ? ORDER BY created_at",
                 (request_id, f'%"preferred_over": "{request_id}"%'))
    out = []
    for (item,) in rows:
        with contextlib.suppress(ValueError):
            out.append(json.loads(item))
    return out


@dataclass(frozen=True)
class ArtifactRow:
    id: str
    kind: str
    name: str
    content_hash: str
    path: str | None
    metadata: dict[str, Any]
    created_at: float


def artifacts(registry_dir: Path, kind: str | None = None) -> list[ArtifactRow]:
    sql = "SELECT id, kind, name, content_hash, path, metadata, created_at FROM artifacts"
    rows = _rows(registry_dir / "registry.db", sql + (" WHERE kind=?" if kind else "") + " ORDER BY created_at DESC, id",
                 (kind,) if kind else ())
    return [ArtifactRow(r[0], r[1], r[2], r[3], r[4], _json(r[5]), r[6]) for r in rows]


def _json(raw: str) -> dict[str, Any]:
    try:
        v = json.loads(raw)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def lineage_edges(registry_dir: Path, art_id: str, max_nodes: int = 200) -> list[tuple[str, str]]:
    """(parent, child) edges of everything connected to ``art_id`` (both directions)."""
    links = _rows(registry_dir / "registry.db", "SELECT parent, child FROM links")
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for p, c in links:
        down.setdefault(p, []).append(c)
        up.setdefault(c, []).append(p)
    edges: set[tuple[str, str]] = set()
    seen = {art_id}
    todo = [art_id]
    while todo and len(seen) < max_nodes:
        n = todo.pop()
        for p in up.get(n, []):
            edges.add((p, n))
            if p not in seen:
                seen.add(p)
                todo.append(p)
        for c in down.get(n, []):
            edges.add((n, c))
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return sorted(edges)


@dataclass(frozen=True)
class SvgNode:
    id: str
    kind: str
    x: int
    y: int
    focus: bool


@dataclass(frozen=True)
class SvgGraph:
    width: int
    height: int
    nodes: list[SvgNode]
    edges: list[tuple[int, int, int, int]]  # x1, y1, x2, y2


NODE_W, NODE_H, GAP_X, GAP_Y = 260, 44, 60, 24


def layout(edges: Iterable[tuple[str, str]], focus: str, kinds: dict[str, str]) -> SvgGraph:
    """Columns by longest path from a source (parents left of children); drawn by the template."""
    edges = list(edges)
    nodes = {focus} | {a for e in edges for a in e}
    parents: dict[str, list[str]] = {n: [] for n in nodes}
    for p, c in edges:
        parents[c].append(p)
    depth: dict[str, int] = {}

    def d(n: str, stack: frozenset[str]) -> int:
        if n not in depth:
            depth[n] = 1 + max((d(p, stack | {n}) for p in parents[n] if p not in stack), default=-1)
        return depth[n]

    for n in sorted(nodes):
        d(n, frozenset())
    cols: dict[int, list[str]] = {}
    for n in sorted(nodes):
        cols.setdefault(depth[n], []).append(n)
    pos: dict[str, tuple[int, int]] = {}
    for col, members in cols.items():
        for i, n in enumerate(members):
            pos[n] = (10 + col * (NODE_W + GAP_X), 10 + i * (NODE_H + GAP_Y))
    svg_nodes = [SvgNode(n, kinds.get(n, n.split(":", 1)[0]), x, y, n == focus) for n, (x, y) in pos.items()]
    lines = [(pos[p][0] + NODE_W, pos[p][1] + NODE_H // 2, pos[ch][0], pos[ch][1] + NODE_H // 2) for p, ch in edges]
    width = 20 + (max(cols) + 1) * (NODE_W + GAP_X) if cols else 300
    height = 20 + max(len(m) for m in cols.values()) * (NODE_H + GAP_Y) if cols else 80
    return SvgGraph(width, height, svg_nodes, lines)


def report_files(reports_dir: Path, limit: int = 200) -> list[Path]:
    if not reports_dir.is_dir():
        return []
    return sorted(reports_dir.rglob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]

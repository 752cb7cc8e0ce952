"""Feedback on logged requests: the item, its validation and its SQLite store.

One feedback item is about one request id and carries any of: a ``rating``
(``up``/``down``), a ``score`` (0..1), a ``comment``, a ``correction`` (the
answer that should have been given), or a pairwise preference (``preferred_over``:
another request id whose answer was worse). Items are stored in SQLite
(``<registry dir>/feedback.db``) together with a snapshot of the traffic record
they are about, so datasets can be built even after the traffic log rotated.

Request body (JSON)::

    {"request_id": "req-1", "rating": "up", "score": 0.9, "comment": "...",
     "correction": "better answer", "preferred_over": "req-0", "user": "alice"}

``submit`` validates, resolves the request ids and stores; it raises ``FeedbackError``:
an unknown request id, one of another tenant, and one without a tenant (the request failed
auth) are all a 404, since only the tenant that made a request may give feedback on it. The
gateway's ``POST /v1/feedback`` (``gateway/feedback_routes.py``) renders it through its error
table. Tuning reads the store back to build datasets. Plain storage: nothing here serves HTTP.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gatehouse_core import sqlitedb

MAX_TEXT = 32_000
MAX_METADATA_DEPTH = 8
RATINGS = ("up", "down")
_FIELDS = {"request_id", "rating", "score", "comment", "correction", "preferred_over", "user", "metadata"}


class FeedbackError(ValueError):
    """Invalid feedback; ``param`` names the offending field, ``status`` the HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    rating: str | None = None
    score: float | None = None
    comment: str | None = None
    correction: str | None = None
    preferred_over: str | None = None
    user: str | None = None
    tenant: str | None = None
    metadata: dict[str, Any] | None = None
    id: str = ""
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _depth(value: Any) -> int:
    """Nesting depth, walked with an explicit stack (deep JSON must not exhaust ours)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _text(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise FeedbackError(f"`{key}` must be a string", key)
    if len(v) > MAX_TEXT:
        raise FeedbackError(f"`{key}` is {len(v)} characters; the limit is {MAX_TEXT}", key)
    return v


def validate(body: Any) -> Feedback:
    """Parse a request body into a ``Feedback`` or raise ``FeedbackError`` naming the field."""
    if not isinstance(body, dict):
        raise FeedbackError("the body must be a JSON object like {\"request_id\": \"...\", \"rating\": \"up\"}")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise FeedbackError(f"unknown field `{unknown[0]}`; known fields: {', '.join(sorted(_FIELDS))}", unknown[0])
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip():
        raise FeedbackError("`request_id` is required: the id of the request (x-request-id header / response id)", "request_id")
    rating = body.get("rating")
    if rating is not None and rating not in RATINGS:
        raise FeedbackError(f"`rating` must be one of {', '.join(RATINGS)}", "rating")
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
            raise FeedbackError("`score` must be a number from 0 to 1", "score")
        score = float(score)
    comment, correction = _text(body, "comment"), _text(body, "correction")
    if correction is not None and not correction.strip():
        raise FeedbackError("`correction` must not be empty", "correction")
    other = body.get("preferred_over")
    if other is not None and (not isinstance(other, str) or not other.strip()):
        raise FeedbackError("`preferred_over` must be the request id of the worse answer", "preferred_over")
    if other == rid:
        raise FeedbackError("`preferred_over` must name a different request", "preferred_over")
    user = _text(body, "user")
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise FeedbackError("`metadata` must be an object", "metadata")
    if meta is not None and _depth(meta) > MAX_METADATA_DEPTH:
        raise FeedbackError(f"`metadata` is nested more than {MAX_METADATA_DEPTH} levels deep", "metadata")
    if meta is not None and len(json.dumps(meta)) > MAX_TEXT:
        raise FeedbackError(f"`metadata` is larger than {MAX_TEXT} characters as JSON", "metadata")
    if rating is None and score is None and comment is None and correction is None and other is None:
        raise FeedbackError("give at least one of `rating`, `score`, `comment`, `correction`, `preferred_over`")
    return Feedback(rid, rating, score, comment, correction, other, user, None, meta)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    item TEXT NOT NULL,
    record TEXT,
    other_record TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
"""


class FeedbackStore:
    """Feedback items (with the traffic record snapshots they refer to) in SQLite."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True)
            p = p / "feedback.db"
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(p)
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def add(self, fb: Feedback, record: dict[str, Any] | None = None, other_record: dict[str, Any] | None = None) -> Feedback:
        item = Feedback(**{**asdict(fb), "id": fb.id or f"fb-{uuid.uuid4().hex[:16]}", "created_at": fb.created_at or time.time()})
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO feedback(id, request_id, created_at, item, record, other_record) VALUES (?,?,?,?,?,?)",
                (
                    item.id, item.request_id, item.created_at, json.dumps(item.to_dict(), sort_keys=True),
                    json.dumps(record, default=str) if record is not None else None,
                    json.dumps(other_record, default=str) if other_record is not None else None,
                ),
            )
        return item

    def iter(self) -> Iterator[tuple[Feedback, dict[str, Any] | None, dict[str, Any] | None]]:
        """(feedback, record snapshot, other record snapshot) in insertion order."""
        with self._lock:
            rows = self._db.execute("SELECT item, record, other_record FROM feedback ORDER BY created_at, id").fetchall()
        for item, rec, other in rows:
            yield Feedback(**json.loads(item)), json.loads(rec) if rec else None, json.loads(other) if other else None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM feedback").fetchone()[0])


LookupRecord = Callable[[str], Awaitable[dict[str, Any] | None]]


async def submit(store: FeedbackStore, lookup_record: LookupRecord, body: Any, tenant: str | None = None) -> Feedback:
    """Validate, look up the record(s) and store; raises ``FeedbackError`` (404 for unknown ids)."""
    fb = validate(body)

    async def find(rid: str, param: str) -> dict[str, Any]:
        rec = await lookup_record(rid)
        # only the tenant that made a request may rate it; another tenant's request, and one
        # that has no tenant (it failed auth), are reported exactly like a missing one
        if rec is None or tenant is None or rec.get("tenant") != tenant:
            raise FeedbackError(f"no request with id {rid!r} (is it older than the traffic log?)", param, 404, "request_not_found")
        return rec

    record = await find(fb.request_id, "request_id")
    other = await find(fb.preferred_over, "preferred_over") if fb.preferred_over else None
    fb = Feedback(**{**asdict(fb), "tenant": tenant})
    return await asyncio.to_thread(store.add, fb, record, other)

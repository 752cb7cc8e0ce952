"""Where prompt versions and labels live: one async interface, two stores.

- ``SQLitePromptStore``: a local file (default ``.gatehouse/prompts.db``); fine
  for one host, several processes (WAL mode, every read hits the file, so a
  label moved by the CLI is seen by the next request).
- ``RedisPromptStore``: shared by replicas. Values are JSON strings, never
  pickles. Labels are read live on each resolution (one ``HGET``), so a label
  move reaches every replica on its next request; versions are immutable and
  cached in process by the registry. Label moves are also published on
  ``<prefix>prompts:events`` for anyone who wants to watch.

Label history is a stack per (prompt, label): ``set_label`` pushes, ``rollback``
pops and points the label at the version underneath.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gatehouse_core import sqlitedb
from gateway.prompts.model import PromptSpec, PromptVersion


class PromptStoreError(Exception):
    """A store-level refusal (unknown version, nothing to roll back to)."""


@dataclass(frozen=True, slots=True)
class PromptSummary:
    id: str
    latest: int
    labels: dict[str, int]


class PromptStore(Protocol):
    async def push(self, spec: PromptSpec) -> tuple[PromptVersion, bool]:
        """Store a new version; if it equals the latest (content hash) return that, created=False."""
        ...

    async def get_version(self, prompt_id: str, version: int) -> PromptVersion | None: ...

    async def latest(self, prompt_id: str) -> int | None: ...

    async def versions(self, prompt_id: str) -> list[PromptVersion]: ...

    async def list_prompts(self) -> list[PromptSummary]: ...

    async def get_label(self, prompt_id: str, label: str) -> int | None: ...

    async def labels(self, prompt_id: str) -> dict[str, int]: ...

    async def set_label(self, prompt_id: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version``; returns the version it pointed to before."""
        ...

    async def rollback(self, prompt_id: str, label: str) -> tuple[int, int]:
        """Move ``label`` back to its previous version; returns (from, to)."""
        ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompt_versions (
    prompt_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (prompt_id, version)
);
CREATE TABLE IF NOT EXISTS prompt_labels (
    prompt_id TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (prompt_id, label)
);
CREATE TABLE IF NOT EXISTS prompt_label_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    ts REAL NOT NULL
);
"""


class SQLitePromptStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # opened on first use, so a gateway whose requests never name a prompt creates no file
        self._sql = sqlitedb.LazyConnection(self.path, _SCHEMA, isolation_level=None)
        self._lock = self._sql.lock

    @property
    def _db(self) -> sqlite3.Connection:
        return self._sql.get()

    def __repr__(self) -> str:
        return f"SQLitePromptStore({str(self.path)!r})"

    def _tx(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def push(self, spec: PromptSpec) -> tuple[PromptVersion, bool]:
        def do() -> tuple[PromptVersion, bool]:
            row = self._db.execute(
                "SELECT body FROM prompt_versions WHERE prompt_id=? ORDER BY version DESC LIMIT 1", (spec.id,)
            ).fetchone()
            if row:
                latest = PromptVersion.from_json(row[0])
                if latest.content_hash == spec.content_hash():
                    return latest, False
                n = latest.version + 1
            else:
                n = 1
            pv = PromptVersion.from_spec(spec, n)
            self._db.execute(
                "INSERT INTO prompt_versions VALUES (?,?,?,?,?)", (pv.id, n, pv.to_json(), pv.content_hash, pv.created_at)
            )
            return pv, True

        return await asyncio.to_thread(self._tx, do)

    async def get_version(self, prompt_id: str, version: int) -> PromptVersion | None:
        rows = await asyncio.to_thread(
            self._read, "SELECT body FROM prompt_versions WHERE prompt_id=? AND version=?", (prompt_id, version)
        )
        return PromptVersion.from_json(rows[0][0]) if rows else None

    async def latest(self, prompt_id: str) -> int | None:
        rows = await asyncio.to_thread(
            self._read, "SELECT MAX(version) FROM prompt_versions WHERE prompt_id=?", (prompt_id,)
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def versions(self, prompt_id: str) -> list[PromptVersion]:
        rows = await asyncio.to_thread(
            self._read, "SELECT body FROM prompt_versions WHERE prompt_id=? ORDER BY version", (prompt_id,)
        )
        return [PromptVersion.from_json(r[0]) for r in rows]

    async def list_prompts(self) -> list[PromptSummary]:
        rows = await asyncio.to_thread(
            self._read, "SELECT prompt_id, MAX(version) FROM prompt_versions GROUP BY prompt_id ORDER BY prompt_id"
        )
        labels = await asyncio.to_thread(self._read, "SELECT prompt_id, label, version FROM prompt_labels")
        by_id: dict[str, dict[str, int]] = {}
        for pid, label, v in labels:
            by_id.setdefault(pid, {})[label] = int(v)
        return [PromptSummary(pid, int(v), dict(sorted(by_id.get(pid, {}).items()))) for pid, v in rows]

    async def get_label(self, prompt_id: str, label: str) -> int | None:
        rows = await asyncio.to_thread(
            self._read, "SELECT version FROM prompt_labels WHERE prompt_id=? AND label=?", (prompt_id, label)
        )
        return int(rows[0][0]) if rows else None

    async def labels(self, prompt_id: str) -> dict[str, int]:
        rows = await asyncio.to_thread(
            self._read, "SELECT label, version FROM prompt_labels WHERE prompt_id=? ORDER BY label", (prompt_id,)
        )
        return {label: int(v) for label, v in rows}

    async def set_label(self, prompt_id: str, label: str, version: int) -> int | None:
        def do() -> int | None:
            exists = self._db.execute(
                "SELECT 1 FROM prompt_versions WHERE prompt_id=? AND version=?", (prompt_id, version)
            ).fetchone()
            if not exists:
                raise PromptStoreError(f"prompt {prompt_id!r} has no version {version}")
            row = self._db.execute(
                "SELECT version FROM prompt_labels WHERE prompt_id=? AND label=?", (prompt_id, label)
            ).fetchone()
            prev = int(row[0]) if row else None
            if prev == version:
                return prev
            now = time.time()
            self._db.execute(
                "INSERT INTO prompt_labels VALUES (?,?,?,?) ON CONFLICT(prompt_id, label) "
                "DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
                (prompt_id, label, version, now),
            )
            self._db.execute(
                "INSERT INTO prompt_label_history (prompt_id, label, version, ts) VALUES (?,?,?,?)",
                (prompt_id, label, version, now),
            )
            return prev

        return await asyncio.to_thread(self._tx, do)

    async def rollback(self, prompt_id: str, label: str) -> tuple[int, int]:
        def do() -> tuple[int, int]:
            rows = self._db.execute(
                "SELECT seq, version FROM prompt_label_history WHERE prompt_id=? AND label=? ORDER BY seq DESC LIMIT 2",
                (prompt_id, label),
            ).fetchall()
            if len(rows) < 2:
                raise PromptStoreError(f"label {label!r} of prompt {prompt_id!r} has no earlier version to roll back to")
            (cur_seq, cur), (_, prev) = rows
            self._db.execute("DELETE FROM prompt_label_history WHERE seq=?", (cur_seq,))
            self._db.execute(
                "UPDATE prompt_labels SET version=?, updated_at=? WHERE prompt_id=? AND label=?",
                (prev, time.time(), prompt_id, label),
            )
            return int(cur), int(prev)

        return await asyncio.to_thread(self._tx, do)

    async def aclose(self) -> None:
        self._sql.close()


# ---------------------------------------------------------------- Redis

# KEYS: version key, labels hash, history list; ARGV: label, version
_SET_LABEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur == ARGV[2] then return tonumber(cur) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
if cur then return tonumber(cur) end
return 0
"""

# KEYS: labels hash, history list; ARGV: label
_ROLLBACK = """
if redis.call('LLEN', KEYS[2]) < 2 then return -1 end
local cur = redis.call('RPOP', KEYS[2])
local prev = redis.call('LINDEX', KEYS[2], -1)
redis.call('HSET', KEYS[1], ARGV[1], prev)
return {tonumber(cur), tonumber(prev)}
"""


class RedisPromptStore:
    """Prompt store on a shared Redis (``redis.asyncio`` client, ``decode_responses`` either way).

    Keys (``P`` = ``<key_prefix>prompts:``; ``{id}`` is a cluster hash tag so a
    prompt's keys live on one slot): ``P ids`` (set), ``P{id}:seq``,
    ``P{id}:v:<n>`` (JSON), ``P{id}:labels`` (hash), ``P{id}:hist:<label>`` (list).
    """

    def __init__(self, redis: Any, key_prefix: str = "gatehouse:") -> None:
        self.redis = redis
        self.p = f"{key_prefix}prompts:"
        self.events_channel = f"{self.p}events"
        self._set_label = redis.register_script(_SET_LABEL)
        self._rollback = redis.register_script(_ROLLBACK)

    def __repr__(self) -> str:
        return f"RedisPromptStore(prefix={self.p!r})"

    def _k(self, prompt_id: str, suffix: str) -> str:
        return f"{self.p}{{{prompt_id}}}:{suffix}"

    @staticmethod
    def _s(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    async def push(self, spec: PromptSpec) -> tuple[PromptVersion, bool]:
        seq = await self.redis.get(self._k(spec.id, "seq"))
        if seq is not None:
            raw = await self.redis.get(self._k(spec.id, f"v:{int(seq)}"))
            if raw is not None:
                latest = PromptVersion.from_json(raw)
                if latest.content_hash == spec.content_hash():
                    return latest, False
        while True:
            n = int(await self.redis.incr(self._k(spec.id, "seq")))
            pv = PromptVersion.from_spec(spec, n)
            # NX: a version, once written, is never overwritten
            if await self.redis.set(self._k(spec.id, f"v:{n}"), pv.to_json(), nx=True):
                await self.redis.sadd(f"{self.p}ids", spec.id)
                return pv, True

    async def get_version(self, prompt_id: str, version: int) -> PromptVersion | None:
        raw = await self.redis.get(self._k(prompt_id, f"v:{version}"))
        return PromptVersion.from_json(raw) if raw is not None else None

    async def latest(self, prompt_id: str) -> int | None:
        seq = await self.redis.get(self._k(prompt_id, "seq"))
        return int(seq) if seq is not None else None

    async def versions(self, prompt_id: str) -> list[PromptVersion]:
        n = await self.latest(prompt_id)
        if not n:
            return []
        raws = await self.redis.mget([self._k(prompt_id, f"v:{i}") for i in range(1, n + 1)])
        return [PromptVersion.from_json(r) for r in raws if r is not None]

    async def list_prompts(self) -> list[PromptSummary]:
        ids = sorted(self._s(i) for i in await self.redis.smembers(f"{self.p}ids"))
        out = []
        for pid in ids:
            latest = await self.latest(pid)
            if latest:
                out.append(PromptSummary(pid, latest, await self.labels(pid)))
        return out

    async def get_label(self, prompt_id: str, label: str) -> int | None:
        v = await self.redis.hget(self._k(prompt_id, "labels"), label)
        return int(v) if v is not None else None

    async def labels(self, prompt_id: str) -> dict[str, int]:
        raw = await self.redis.hgetall(self._k(prompt_id, "labels"))
        return dict(sorted((self._s(k), int(v)) for k, v in raw.items()))

    async def set_label(self, prompt_id: str, label: str, version: int) -> int | None:
        res = int(
            await self._set_label(
                keys=[self._k(prompt_id, f"v:{version}"), self._k(prompt_id, "labels"), self._k(prompt_id, f"hist:{label}")],
                args=[label, str(version)],
            )
        )
        if res == -1:
            raise PromptStoreError(f"prompt {prompt_id!r} has no version {version}")
        await self._publish(prompt_id, label, version)
        return res or None

    async def rollback(self, prompt_id: str, label: str) -> tuple[int, int]:
        res = await self._rollback(
            keys=[self._k(prompt_id, "labels"), self._k(prompt_id, f"hist:{label}")], args=[label]
        )
        if res == -1 or not isinstance(res, list):
            raise PromptStoreError(f"label {label!r} of prompt {prompt_id!r} has no earlier version to roll back to")
        cur, prev = int(res[0]), int(res[1])
        await self._publish(prompt_id, label, prev)
        return cur, prev

    async def _publish(self, prompt_id: str, label: str, version: int) -> None:
        msg = json.dumps({"id": prompt_id, "label": label, "version": version, "ts": time.time()})
        await self.redis.publish(self.events_channel, msg)

    async def aclose(self) -> None:
        return None  # the client belongs to whoever passed it in

"""The Responses API's response store: ``store: true`` responses, per tenant.

Embedded SQLite by default (``responses.store: sqlite``, ``responses.sqlite_path``) or Redis
(``responses.store: redis``, needs ``redis.url``). An entry is the Response object plus the
conversation that produced it (core messages), so ``previous_response_id`` continues it and
``GET /v1/responses/{id}`` returns it. Tenants never see each other's entries (the tenant is
part of the key). Only JSON goes in and comes out.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from gatehouse_core import sqlitedb


class ResponseStore(Protocol):
    async def get(self, tenant: str, rid: str) -> dict[str, Any] | None: ...

    async def put(self, tenant: str, rid: str, entry: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    tenant TEXT NOT NULL, id TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, entry BLOB NOT NULL,
    PRIMARY KEY (tenant, id)
);
"""


class SQLiteResponseStore:
    def __init__(self, path: str | Path, ttl_seconds: int) -> None:
        self.path = Path(path)
        self.ttl = ttl_seconds
        # opened on first use: a gateway nobody stores responses on writes no file
        self._sql = sqlitedb.LazyConnection(self.path, _SCHEMA, timeout=30.0)
        self._lock = self._sql.lock

    @property
    def _db(self) -> sqlite3.Connection:
        return self._sql.get()

    def _get(self, tenant: str, rid: str) -> dict[str, Any] | None:
        if not self._sql.opened and not self.path.exists():
            return None
        with self._lock:
            row = self._db.execute("SELECT entry FROM responses WHERE tenant=? AND id=? AND expires>?", (tenant, rid, time.time())).fetchone()
        return orjson.loads(row[0]) if row else None

    def _put(self, tenant: str, rid: str, entry: dict[str, Any]) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?)", (tenant, rid, now, now + self.ttl, orjson.dumps(entry)))
            self._db.execute("DELETE FROM responses WHERE expires<=?", (now,))

    async def get(self, tenant: str, rid: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, tenant, rid)

    async def put(self, tenant: str, rid: str, entry: dict[str, Any]) -> None:
        await asyncio.to_thread(self._put, tenant, rid, entry)

    async def aclose(self) -> None:
        self._sql.close()


class RedisResponseStore:
    def __init__(self, redis: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis, self.prefix, self.ttl = redis, prefix, ttl_seconds

    def _key(self, tenant: str, rid: str) -> str:
        return f"{self.prefix}responses:{quote(tenant, safe='')}:{quote(rid, safe='')}"

    async def get(self, tenant: str, rid: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self._key(tenant, rid))
        return orjson.loads(raw) if raw else None

    async def put(self, tenant: str, rid: str, entry: dict[str, Any]) -> None:
        await self.redis.set(self._key(tenant, rid), orjson.dumps(entry), ex=self.ttl)

    async def aclose(self) -> None:
        return None  # the app closes its Redis client


def build_response_store(settings: Any, redis: Any) -> ResponseStore:
    cfg = settings.responses
    if cfg.store == "redis":
        if redis is None:
            raise ValueError("responses.store is redis but redis.url is not set")
        return RedisResponseStore(redis, settings.redis.key_prefix, cfg.ttl_seconds)
    return SQLiteResponseStore(settings.resolve_path(cfg.sqlite_path), cfg.ttl_seconds)

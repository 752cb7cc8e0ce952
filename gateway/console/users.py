"""Console users, kept beside the API keys (the ``auth.store`` the gateway uses).

- ``config``: ``console.users`` in the config file (read-only; hash passwords with
  ``gatehouse console hash-password``);
- ``sqlite``: table ``console_users`` in the key store's file (``auth.sqlite_path``);
- ``redis``: hash ``<prefix>console:users`` (name -> JSON), shared by replicas.

Config users are consulted first. Only scrypt hashes are stored, never passwords.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from gatehouse_core import sqlitedb
from gateway.config import Settings
from gateway.console.store import hash_password, verify_password

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# a failed name lookup still spends one scrypt, so timing does not reveal which names exist
_DUMMY_HASH = hash_password("not-a-user", salt=b"\0" * 16)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    name: str
    role: str  # viewer | editor
    tenant: str | None
    password_hash: str
    source: str = "managed"


class UserStore:
    def __init__(self, settings: Settings, redis: Any = None) -> None:
        self.config = {u.name: ConsoleUser(u.name, u.role, u.tenant, u.password_hash, "config") for u in settings.console.users}
        self.kind = settings.auth.store
        self.redis = redis
        self.redis_key = settings.redis.key_prefix + "console:users"
        self.sqlite_path = settings.resolve_path(settings.auth.sqlite_path)
        self._sql = sqlitedb.LazyConnection(
            self.sqlite_path, "CREATE TABLE IF NOT EXISTS console_users (name TEXT PRIMARY KEY, record TEXT NOT NULL)",
            isolation_level=None)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._sql.query(sql, args)

    @property
    def writable(self) -> bool:
        return self.kind in ("sqlite", "redis") and (self.kind != "redis" or self.redis is not None)

    async def get(self, name: str) -> ConsoleUser | None:
        if name in self.config:
            return self.config[name]
        raw: Any = None
        if self.kind == "sqlite":
            rows = await asyncio.to_thread(self._q, "SELECT record FROM console_users WHERE name=?", (name,))
            raw = rows[0][0] if rows else None
        elif self.kind == "redis" and self.redis is not None:
            raw = await self.redis.hget(self.redis_key, name)
        return ConsoleUser(**json.loads(raw)) if raw else None

    async def list(self) -> list[ConsoleUser]:
        out = list(self.config.values())
        if self.kind == "sqlite":
            out += [ConsoleUser(**json.loads(r[0])) for r in await asyncio.to_thread(self._q, "SELECT record FROM console_users ORDER BY name")]
        elif self.kind == "redis" and self.redis is not None:
            out += [ConsoleUser(**json.loads(v)) for _, v in sorted((await self.redis.hgetall(self.redis_key)).items())]
        return out

    async def put(self, name: str, role: str, password: str, tenant: str | None = None) -> ConsoleUser:
        if not NAME_RE.match(name):
            raise ValueError(f"user name must match {NAME_RE.pattern}")
        if role not in ("viewer", "editor"):
            raise ValueError("role must be viewer or editor")
        if name in self.config:
            raise ValueError(f"user {name!r} is defined in the config file (console.users)")
        if not self.writable:
            raise ValueError("console users can be stored only with auth.store sqlite or redis; "
                             "with auth.store config, add them to console.users")
        user = ConsoleUser(name, role, tenant or None, await asyncio.to_thread(hash_password, password))
        raw = json.dumps(asdict(user))
        if self.kind == "sqlite":
            await asyncio.to_thread(self._q, "INSERT INTO console_users VALUES (?,?) ON CONFLICT(name) DO UPDATE SET record=excluded.record", (name, raw))
        else:
            await self.redis.hset(self.redis_key, name, raw)
        return user

    async def remove(self, name: str) -> bool:
        if self.kind == "sqlite":
            before = await self.get(name)
            await asyncio.to_thread(self._q, "DELETE FROM console_users WHERE name=?", (name,))
            return before is not None
        if self.kind == "redis" and self.redis is not None:
            return bool(await self.redis.hdel(self.redis_key, name))
        return False

    async def authenticate(self, name: str, password: str) -> ConsoleUser | None:
        user = await self.get(name) if NAME_RE.match(name) else None
        ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else _DUMMY_HASH)
        return user if ok and user is not None else None

    def close(self) -> None:
        self._sql.close()



"""Console state: password hashes, sessions, CSRF tokens and the append-only audit log.

Sessions and the audit log live in one SQLite file (``console.db_path``):

- ``sessions``: the sha256 of each session id (the cookie value is never stored), the
  user, role, tenant scope, its CSRF token and its expiry. A sign-in always creates a
  new id (no session fixation); sign-out and expiry delete the row.
- ``audit``: one row per state-changing action (who, what, when, before/after). Triggers
  refuse UPDATE and DELETE, so the table only grows.

Passwords are hashed with scrypt (``hashlib.scrypt``, n=2**14, r=8, p=1, 16-byte salt)
and compared in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse_core import sqlitedb

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
ROLES = ("viewer", "editor", "admin")  # admin: signed in with the admin key


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), for config files and the user store."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = salt or secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(dk).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, want = stored.split("$")
        if scheme != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                            dklen=len(base64.b64decode(want)), maxmem=128 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, base64.b64decode(want))


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    sid_hash: str
    user: str
    role: str
    tenant: str | None
    csrf: str
    expires_at: float

    @property
    def can_edit(self) -> bool:
        return self.role in ("editor", "admin")

    def sees_tenant(self, tenant: str | None) -> bool:
        return self.tenant is None or tenant == self.tenant


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: float
    actor: str
    role: str
    action: str
    target: str
    before: Any
    after: Any
    ok: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    sid_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT,
    ok INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class ConsoleStore:
    def __init__(self, path: str | Path, session_ttl: float) -> None:
        self.path = Path(path)
        self.session_ttl = session_ttl
        self._sql = sqlitedb.LazyConnection(self.path, _SCHEMA, isolation_level=None)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._sql.query(sql, args)

    async def _aq(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._q, sql, args)

    # -- sessions ----------------------------------------------------------------------
    async def create_session(self, user: str, role: str, tenant: str | None) -> tuple[str, Session]:
        """A fresh random id (returned once, for the cookie) and its session."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        s = Session(_sha(sid), user, role, tenant, secrets.token_urlsafe(32), now + self.session_ttl)
        await self._aq("DELETE FROM sessions WHERE expires_at < ?", (now,))
        await self._aq("INSERT INTO sessions VALUES (?,?,?,?,?,?,?)",
                       (s.sid_hash, user, role, tenant, s.csrf, now, s.expires_at))
        return sid, s

    async def session(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 200:
            return None
        rows = await self._aq("SELECT sid_hash, user, role, tenant, csrf, expires_at FROM sessions WHERE sid_hash=?", (_sha(sid),))
        if not rows:
            return None
        s = Session(*rows[0])
        if s.expires_at < time.time():
            await self._aq("DELETE FROM sessions WHERE sid_hash=?", (s.sid_hash,))
            return None
        return s

    async def end_session(self, s: Session) -> None:
        await self._aq("DELETE FROM sessions WHERE sid_hash=?", (s.sid_hash,))

    # -- audit ------------------------------------------------------------------------
    async def audit(self, actor: str, role: str, action: str, target: str, before: Any = None, after: Any = None,
                    ok: bool = True) -> None:
        def enc(v: Any) -> str | None:
            return None if v is None else json.dumps(v, sort_keys=True, default=str)[:20_000]

        await self._aq("INSERT INTO audit(ts, actor, role, action, target, before, after, ok) VALUES (?,?,?,?,?,?,?,?)",
                       (time.time(), actor, role, action, target, enc(before), enc(after), int(ok)))

    async def audit_log(self, limit: int = 200, action: str | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, ts, actor, role, action, target, before, after, ok FROM audit"
        args: tuple[Any, ...] = ()
        if action:
            sql += " WHERE action = ?"
            args = (action,)
        rows = await self._aq(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None,
                           json.loads(r[7]) if r[7] else None, bool(r[8])) for r in rows]

    def close(self) -> None:
        self._sql.close()


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())


class LoginThrottle:
    """Failed sign-ins per (client address, user name): after ``limit`` failures within
    ``window`` seconds, that pair is refused until the oldest failure ages out. Kept in
    process (each replica counts its own), which bounds guessing without a shared store."""

    def __init__(self, limit: int = 5, window: float = 300.0, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._fails: dict[tuple[str, str], list[float]] = {}

    def _recent(self, key: tuple[str, str]) -> list[float]:
        now = self.clock()
        fails = [t for t in self._fails.get(key, []) if now - t < self.window]
        if fails:
            self._fails[key] = fails
        else:
            self._fails.pop(key, None)
        return fails

    def retry_after(self, key: tuple[str, str]) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        fails = self._recent(key)
        if len(fails) < self.limit:
            return 0.0
        return max(0.0, self.window - (self.clock() - fails[0]))

    def failed(self, key: tuple[str, str]) -> None:
        if len(self._fails) > 100_000:  # a flood of distinct keys: forget the oldest half
            for k in list(self._fails)[: len(self._fails) // 2]:
                del self._fails[k]
        self._fails.setdefault(key, []).append(self.clock())

    def succeeded(self, key: tuple[str, str]) -> None:
        self._fails.pop(key, None)

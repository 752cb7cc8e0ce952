"""API keys and tenants: who is calling, resolved from the presented key.

A ``KeyStore`` answers one question on the request path, ``lookup(api_key)
-> Caller | None``. Keys are high-entropy random strings (``gh-`` + 256 bits),
so a fast hash is the right tool: every store keeps only the key's SHA-256
digest, looks it up *by digest* and confirms with ``hmac.compare_digest`` on
the digests. Nothing an attacker controls is compared byte-by-byte against a
secret, so response timing reveals nothing about stored keys.

Stores (``auth.store`` in the config):

- ``config``: ``auth.keys`` from the config file (``key`` or ``key_sha256``)
  plus ``GATEHOUSE_API_KEYS`` (``key=tenant`` pairs); read-only.
- ``redis``: keys managed by ``gatehouse keys`` / ``/admin/keys``, shared by
  all replicas. Values are JSON only. A small TTL cache (``CACHE_TTL`` = 1 s)
  sits in front of Redis, so a revocation is visible on every replica within
  one second (immediately on the replica that revoked it).
- ``sqlite``: the embedded store for a single node without Redis.

Config keys are always consulted first; ``redis``/``sqlite`` add managed keys.
Per-key rate limits travel as ``limit:*`` scopes on the ``Caller`` (see
``gateway.ratelimit``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from gatehouse_core import sqlitedb
from gateway.config import AuthSettings, Settings
from gateway.errors import ErrorKind, GatewayError, renders_errors
from gateway.ratelimit import LIMIT_NAMES, limit_scopes
from gateway.types import Caller

KEY_PREFIX = "gh-"
CACHE_TTL = 1.0  # seconds a Redis lookup (hit or miss) is reused: the revocation delay bound
CACHE_SIZE = 10_000


def digest(api_key: str) -> str:
    """SHA-256 hex digest of a key: what every store keeps and looks up by."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


@dataclass(slots=True)
class KeyRecord:
    """A managed key as stored (JSON): never the plaintext, only its digest."""

    key_id: str
    tenant: str
    sha256: str
    display: str  # first characters of the key, to recognise it in listings
    models: list[str] = field(default_factory=lambda: ["*"])
    policy: str | None = None
    scopes: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)  # see ratelimit.LIMIT_NAMES
    created_at: float = 0.0
    revoked_at: float | None = None
    source: str = "managed"  # managed | config

    def caller(self) -> Caller:
        return Caller(
            tenant=self.tenant,
            key_id=self.key_id,
            models=tuple(self.models) or ("*",),
            policy=self.policy,
            scopes=tuple(self.scopes) + limit_scopes(self.limits),
        )

    def public(self) -> dict[str, Any]:
        """What listings show: everything but the digest."""
        d = asdict(self)
        d.pop("sha256")
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        d = orjson.loads(raw)
        return cls(**{k: v for k, v in d.items() if k in cls.__slots__})  # type: ignore[attr-defined]


@dataclass(slots=True)
class NewKey:
    key_id: str
    key: str  # plaintext: shown once, never stored
    record: KeyRecord


def _validate_limits(limits: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in (limits or {}).items():
        if name not in LIMIT_NAMES:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}",
                param="limits",
            )
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"limit {name} must be an integer >= 1", param="limits")
        out[name] = value
    return out


def make_record(
    tenant: str,
    models: Sequence[str] = ("*",),
    policy: str | None = None,
    scopes: Sequence[str] = (),
    limits: Mapping[str, int] | None = None,
    key_id: str | None = None,
) -> NewKey:
    if not tenant or not tenant.strip():
        raise GatewayError(ErrorKind.INVALID_REQUEST, "tenant is required", param="tenant")
    key = new_key()
    rec = KeyRecord(
        key_id=key_id or new_key_id(),
        tenant=tenant,
        sha256=digest(key),
        display=key[:10],
        models=list(models) or ["*"],
        policy=policy,
        scopes=[s for s in scopes if not s.startswith(("limit:", "tenant-limit:"))],
        limits=_validate_limits(limits),
        created_at=time.time(),
    )
    return NewKey(rec.key_id, key, rec)


@runtime_checkable
class KeyStore(Protocol):
    async def lookup(self, api_key: str) -> Caller | None: ...

    async def create(
        self,
        tenant: str,
        models: Sequence[str] = ("*",),
        policy: str | None = None,
        scopes: Sequence[str] = (),
        limits: Mapping[str, int] | None = None,
        key_id: str | None = None,
    ) -> NewKey: ...

    async def list(self, tenant: str | None = None) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class ReadOnlyStore(GatewayError):
    def __init__(self) -> None:
        super().__init__(
            ErrorKind.INVALID_REQUEST,
            "this key store is read-only: config keys live in the config file; "
            "set auth.store to `redis` or `sqlite` to manage keys",
        )


class ConfigKeyStore:
    """Keys from ``auth.keys`` (and ``GATEHOUSE_API_KEYS``), hashed at load."""

    def __init__(self, records: Sequence[KeyRecord]) -> None:
        self._by_digest: dict[str, KeyRecord] = {}
        for r in records:
            if r.sha256 in self._by_digest:
                raise ValueError(f"auth.keys: key {r.key_id!r} has the same secret as {self._by_digest[r.sha256].key_id!r}")
            self._by_digest[r.sha256] = r
        # built once: config keys never change while the process runs (the Redis store caches too)
        self._callers = {d: r.caller() for d, r in self._by_digest.items()}

    @classmethod
    def from_settings(cls, auth: AuthSettings, env: Mapping[str, str] | None = None) -> ConfigKeyStore:
        records = []
        for k in auth.keys:
            sha = digest(k.key.get_secret_value()) if k.key is not None else (k.key_sha256 or "").lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"auth.keys {k.id!r}: key_sha256 must be 64 hex characters")
            records.append(
                KeyRecord(k.id, k.tenant, sha, "(config)", list(k.models), k.policy, list(k.scopes), source="config")
            )
        env = os.environ if env is None else env
        for i, pair in enumerate(p.strip() for p in env.get("GATEHOUSE_API_KEYS", "").split(",")):
            if not pair:
                continue
            key, sep, tenant = pair.partition("=")
            if not sep or not key or not tenant:
                raise ValueError(f"GATEHOUSE_API_KEYS entry {i + 1}: expected key=tenant")
            records.append(KeyRecord(f"env-{i + 1}", tenant, digest(key), "(env)", source="config"))
        return cls(records)

    async def lookup(self, api_key: str) -> Caller | None:
        d = digest(api_key)
        rec = self._by_digest.get(d)
        if rec is None or not hmac.compare_digest(rec.sha256, d):
            return None
        return self._callers[d]

    async def create(self, *a: Any, **kw: Any) -> NewKey:
        raise ReadOnlyStore()

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        return [r for r in self._by_digest.values() if tenant is None or r.tenant == tenant]

    async def revoke(self, key_id: str) -> bool:
        raise ReadOnlyStore()

    async def aclose(self) -> None:
        return None


class _TTLCache:
    """LRU with a per-entry deadline; holds misses too (None), so floods of bad keys stay cheap."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._d: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()

    def get(self, k: str) -> tuple[bool, Caller | None]:
        hit = self._d.get(k)
        if hit is None:
            return False, None
        if hit[0] < time.monotonic():
            del self._d[k]
            return False, None
        self._d.move_to_end(k)
        return True, hit[1]

    def put(self, k: str, v: Caller | None) -> None:
        self._d[k] = (time.monotonic() + self.ttl, v)
        self._d.move_to_end(k)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def drop(self, k: str) -> None:
        self._d.pop(k, None)


class RedisKeyStore:
    """Managed keys in Redis, JSON values.

    ``{p}keys:sha:<digest>`` -> record (only while active), ``{p}keys:id:<key_id>``
    -> record (kept after revocation, for audit), ``{p}keys:ids`` -> set of ids.
    """

    def __init__(self, redis: Any, prefix: str = "gatehouse:", cache_ttl: float = CACHE_TTL, cache_size: int = CACHE_SIZE) -> None:
        self.redis = redis
        self.prefix = prefix
        self._cache = _TTLCache(cache_ttl, cache_size)

    def _k(self, *parts: str) -> str:
        return self.prefix + "keys:" + ":".join(parts)

    async def lookup(self, api_key: str) -> Caller | None:
        d = digest(api_key)
        found, caller = self._cache.get(d)
        if found:
            return caller
        try:
            raw = await self.redis.get(self._k("sha", d))
        except Exception as exc:  # redis down: deny, visibly (a 503, not a 401)
            raise GatewayError(ErrorKind.UNAVAILABLE, "key store unavailable") from exc
        caller = None
        if raw is not None:
            rec = KeyRecord.from_json(raw)
            if hmac.compare_digest(rec.sha256, d) and rec.revoked_at is None:
                caller = rec.caller()
        self._cache.put(d, caller)
        return caller

    async def create(
        self,
        tenant: str,
        models: Sequence[str] = ("*",),
        policy: str | None = None,
        scopes: Sequence[str] = (),
        limits: Mapping[str, int] | None = None,
        key_id: str | None = None,
    ) -> NewKey:
        nk = make_record(tenant, models, policy, scopes, limits, key_id)
        data = nk.record.to_json()
        # NX on the id: never overwrite an existing key's record
        if not await self.redis.set(self._k("id", nk.key_id), data, nx=True):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"key id {nk.key_id!r} exists", param="key_id")
        async with self.redis.pipeline(transaction=True) as p:
            p.set(self._k("sha", nk.record.sha256), data)
            p.sadd(self._k("ids"), nk.key_id)
            await p.execute()
        self._cache.drop(nk.record.sha256)
        return nk

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        ids = sorted(x.decode() if isinstance(x, bytes) else x for x in await self.redis.smembers(self._k("ids")))
        if not ids:
            return []
        raws = await self.redis.mget([self._k("id", i) for i in ids])
        recs = [KeyRecord.from_json(r) for r in raws if r is not None]
        return [r for r in recs if tenant is None or r.tenant == tenant]

    async def revoke(self, key_id: str) -> bool:
        raw = await self.redis.get(self._k("id", key_id))
        if raw is None:
            return False
        rec = KeyRecord.from_json(raw)
        if rec.revoked_at is None:
            rec.revoked_at = time.time()
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(self._k("sha", rec.sha256))
            p.set(self._k("id", key_id), rec.to_json())
            await p.execute()
        self._cache.drop(rec.sha256)
        return True

    async def aclose(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY,
  sha256 TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  record TEXT NOT NULL,
  revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant);
"""


class SQLiteKeyStore:
    """Embedded store (one node, no Redis). Indexed lookups are ~10 µs, so they
    run inline under a lock rather than paying a thread hop; WAL lets the CLI
    write while the gateway reads, and every lookup sees revocations at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlitedb.connect(path, isolation_level=None, timeout=5.0)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    async def lookup(self, api_key: str) -> Caller | None:
        d = digest(api_key)
        rows = self._q("SELECT sha256, record FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL", (d,))
        if not rows or not hmac.compare_digest(rows[0][0], d):
            return None
        return KeyRecord.from_json(rows[0][1]).caller()

    async def create(
        self,
        tenant: str,
        models: Sequence[str] = ("*",),
        policy: str | None = None,
        scopes: Sequence[str] = (),
        limits: Mapping[str, int] | None = None,
        key_id: str | None = None,
    ) -> NewKey:
        nk = make_record(tenant, models, policy, scopes, limits, key_id)
        try:
            self._q(
                "INSERT INTO api_keys(key_id, sha256, tenant, record) VALUES (?, ?, ?, ?)",
                (nk.key_id, nk.record.sha256, tenant, nk.record.to_json().decode()),
            )
        except sqlite3.IntegrityError:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"key id {nk.key_id!r} exists", param="key_id") from None
        return nk

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        if tenant is None:
            rows = self._q("SELECT record FROM api_keys ORDER BY key_id")
        else:
            rows = self._q("SELECT record FROM api_keys WHERE tenant = ? ORDER BY key_id", (tenant,))
        return [KeyRecord.from_json(r[0]) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        rows = self._q("SELECT record FROM api_keys WHERE key_id = ?", (key_id,))
        if not rows:
            return False
        rec = KeyRecord.from_json(rows[0][0])
        if rec.revoked_at is None:
            rec.revoked_at = time.time()
            self._q(
                "UPDATE api_keys SET revoked_at = ?, record = ? WHERE key_id = ?",
                (rec.revoked_at, rec.to_json().decode(), key_id),
            )
        return True

    async def aclose(self) -> None:
        await asyncio.to_thread(self._db.close)


class CompositeKeyStore:
    """Config keys first, then the managed store; management goes to the managed store."""

    def __init__(self, config: ConfigKeyStore, managed: KeyStore) -> None:
        self.config = config
        self.managed = managed

    async def lookup(self, api_key: str) -> Caller | None:
        return await self.config.lookup(api_key) or await self.managed.lookup(api_key)

    async def create(self, *a: Any, **kw: Any) -> NewKey:
        return await self.managed.create(*a, **kw)

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        return await self.config.list(tenant) + await self.managed.list(tenant)

    async def revoke(self, key_id: str) -> bool:
        if any(r.key_id == key_id for r in await self.config.list()):
            raise ReadOnlyStore()
        return await self.managed.revoke(key_id)

    async def aclose(self) -> None:
        await self.managed.aclose()


def build_key_store(settings: Settings, redis: Any = None, env: Mapping[str, str] | None = None) -> KeyStore:
    """The store ``auth.store`` selects; ``redis`` is the app's shared client."""
    config = ConfigKeyStore.from_settings(settings.auth, env)
    store = settings.auth.store
    if store == "config":
        return config
    if store == "redis":
        if redis is None:
            raise ValueError("auth.store is `redis` but redis.url is not set; set redis.url or use auth.store: sqlite")
        return CompositeKeyStore(config, RedisKeyStore(redis, settings.redis.key_prefix))
    return CompositeKeyStore(config, SQLiteKeyStore(settings.resolve_path(settings.auth.sqlite_path)))


def managed_store(keys: Any) -> KeyStore | None:
    """The store that can ``create`` inside the app's key store (None: config keys only)."""
    store = getattr(keys, "managed", keys)
    return store if isinstance(store, (RedisKeyStore, SQLiteKeyStore)) else None


async def routes(rt: Any) -> list[Any]:
    """Hook for the app's feature-route loader: ``/admin/keys`` when a managed store is configured."""
    store = managed_store(rt.keys)
    return admin_routes(store) if store is not None else []


# --- admin API ---------------------------------------------------------------


def admin_routes(store: KeyStore) -> list[Any]:
    """``/admin/keys`` routes; the app mounts them behind the admin key.

    GET /admin/keys[?tenant=t] -> {"data": [record...]}
    POST /admin/keys {tenant, models?, policy?, scopes?, limits?, key_id?} -> 201 {key_id, key, ...}
    DELETE /admin/keys/{key_id} -> {"key_id", "revoked": true} | 404
    """
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def respond(body: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def list_keys(request: Request) -> Response:
        recs = await store.list(request.query_params.get("tenant"))
        return respond({"object": "list", "data": [r.public() for r in recs]})

    async def create_key(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "body must be a JSON object")
        unknown = set(body) - {"tenant", "models", "policy", "scopes", "limits", "key_id"}
        if unknown:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"unknown field(s): {', '.join(sorted(unknown))}")
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "tenant (string) is required", param="tenant")
        for name in ("models", "scopes"):
            v = body.get(name, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"{name} must be a list of strings", param=name)
        if not isinstance(body.get("limits", {}), dict):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "limits must be an object", param="limits")
        nk = await store.create(
            tenant,
            models=body.get("models") or ["*"],
            policy=body.get("policy"),
            scopes=body.get("scopes") or [],
            limits=body.get("limits") or {},
            key_id=body.get("key_id"),
        )
        return respond({**nk.record.public(), "key": nk.key}, 201)

    async def revoke_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        if not await store.revoke(key_id):
            raise GatewayError(ErrorKind.NOT_FOUND, f"no key {key_id!r}", code="key_not_found")
        return respond({"key_id": key_id, "revoked": True})

    return [
        Route("/admin/keys", renders_errors(list_keys), methods=["GET"]),
        Route("/admin/keys", renders_errors(create_key), methods=["POST"]),
        Route("/admin/keys/{key_id}", renders_errors(revoke_key), methods=["DELETE"]),
    ]

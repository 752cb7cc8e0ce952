"""API keys: config/Redis/SQLite stores, revocation, CLI and admin routes (real Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from contextlib import redirect_stdout
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from gateway.cli.keys import main as keys_main
from gateway.config import parse_settings
from gateway.errors import GatewayError
from gateway.keys import (
    ConfigKeyStore,
    KeyRecord,
    RedisKeyStore,
    SQLiteKeyStore,
    admin_routes,
    build_key_store,
    digest,
)
from gateway.ratelimit import parse_limit_scopes
from tests.conftest import REDIS_URL


def settings_with_keys(**auth: object) -> object:
    return parse_settings({"auth": auth})


async def test_config_keys_plain_and_sha256() -> None:
    sha = hashlib.sha256(b"gh-second").hexdigest()
    s = settings_with_keys(
        keys=[
            {"id": "a", "tenant": "acme", "key": "gh-first", "models": ["m1"], "scopes": ["limit:rpm=5"]},
            {"id": "b", "tenant": "beta", "key_sha256": sha, "policy": "strict"},
        ]
    )
    store = ConfigKeyStore.from_settings(s.auth, env={})
    a = await store.lookup("gh-first")
    assert a is not None and a.tenant == "acme" and a.key_id == "a" and a.models == ("m1",)
    assert parse_limit_scopes(a.scopes) == {"rpm": 5}
    b = await store.lookup("gh-second")
    assert b is not None and b.tenant == "beta" and b.policy == "strict"
    assert await store.lookup("gh-first ") is None
    assert await store.lookup("") is None
    with pytest.raises(GatewayError):
        await store.create("x")


async def test_env_keys_and_duplicates() -> None:
    s = settings_with_keys()
    store = ConfigKeyStore.from_settings(s.auth, env={"GATEHOUSE_API_KEYS": "k1=t1, k2=t2"})
    c = await store.lookup("k2")
    assert c is not None and c.tenant == "t2"
    with pytest.raises(ValueError, match="key=tenant"):
        ConfigKeyStore.from_settings(s.auth, env={"GATEHOUSE_API_KEYS": "novalue"})
    dup = settings_with_keys(keys=[{"id": "a", "tenant": "t", "key": "same"}, {"id": "b", "tenant": "t", "key": "same"}])
    with pytest.raises(ValueError, match="same secret"):
        ConfigKeyStore.from_settings(dup.auth, env={})


async def test_redis_store_lifecycle(redis: aioredis.Redis, prefix: str) -> None:
    store = RedisKeyStore(redis, prefix, cache_ttl=0.2)
    nk = await store.create("acme", ["m1", "m2"], "strict", ["admin"], {"rpm": 10, "tenant_tpm": 1000})
    assert nk.key.startswith("gh-") and len(nk.key) > 40
    # JSON only, and never the plaintext key
    stored = await redis.get(f"{prefix}keys:sha:{digest(nk.key)}")
    rec = orjson.loads(stored)
    assert rec["tenant"] == "acme" and nk.key not in stored.decode()
    async for k in redis.scan_iter(match=prefix + "*"):
        if (await redis.type(k)) == b"string":
            assert nk.key.encode() not in await redis.get(k)

    caller = await store.lookup(nk.key)
    assert caller is not None and caller.tenant == "acme" and caller.models == ("m1", "m2")
    assert parse_limit_scopes(caller.scopes) == {"rpm": 10, "tenant_tpm": 1000}
    assert "admin" in caller.scopes
    assert await store.lookup("gh-nope") is None

    listed = await store.list()
    assert [r.key_id for r in listed] == [nk.key_id]
    assert "sha256" not in listed[0].public()
    assert await store.list("other") == []

    # another replica's cache still holds the key for at most cache_ttl
    other = RedisKeyStore(redis, prefix, cache_ttl=0.2)
    assert await other.lookup(nk.key) is not None
    assert await store.revoke(nk.key_id) is True
    assert await store.lookup(nk.key) is None  # same replica: immediately
    await asyncio.sleep(0.25)
    assert await other.lookup(nk.key) is None  # other replica: within the TTL
    assert (await store.list())[0].revoked_at is not None
    assert await store.revoke("key_missing") is False

    with pytest.raises(GatewayError, match="exists"):
        await store.create("acme", key_id=nk.key_id)
    with pytest.raises(GatewayError, match="unknown limit"):
        await store.create("acme", limits={"rps": 1})


async def test_redis_down_is_503_not_401() -> None:
    r = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = RedisKeyStore(r, "x:")
    with pytest.raises(GatewayError) as ei:
        await store.lookup("gh-anything")
    assert ei.value.status == 503
    await r.aclose()


async def test_sqlite_store(tmp_path: Path) -> None:
    store = SQLiteKeyStore(tmp_path / "k" / "keys.db")
    nk = await store.create("acme", limits={"concurrent": 2})
    c = await store.lookup(nk.key)
    assert c is not None and c.tenant == "acme" and parse_limit_scopes(c.scopes) == {"concurrent": 2}
    # a second connection (the CLI) revokes: visible at once
    other = SQLiteKeyStore(tmp_path / "k" / "keys.db")
    assert await other.revoke(nk.key_id)
    assert await store.lookup(nk.key) is None
    assert (await store.list("acme"))[0].revoked_at is not None
    await store.aclose()
    await other.aclose()


async def test_build_key_store_composite(tmp_path: Path) -> None:
    s = parse_settings(
        {"auth": {"store": "sqlite", "sqlite_path": "keys.db", "keys": [{"id": "cfg", "tenant": "ops", "key": "gh-cfg"}]}},
        base_dir=str(tmp_path),
    )
    store = build_key_store(s, env={})
    nk = await store.create("acme")
    assert (await store.lookup("gh-cfg")).tenant == "ops"  # type: ignore[union-attr]
    assert (await store.lookup(nk.key)).tenant == "acme"  # type: ignore[union-attr]
    assert {r.source for r in await store.list()} == {"config", "managed"}
    with pytest.raises(GatewayError, match="read-only"):
        await store.revoke("cfg")
    await store.aclose()
    assert (tmp_path / "keys.db").exists()
    with pytest.raises(ValueError, match=r"redis\.url"):
        build_key_store(parse_settings({"auth": {"store": "redis"}}), None, env={})


def test_record_json_roundtrip() -> None:
    r = KeyRecord("k", "t", "a" * 64, "gh-abc", limits={"rpm": 3})
    assert KeyRecord.from_json(r.to_json()) == r


def test_cli_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEHOUSE_CONFIG", raising=False)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"auth": {"store": "sqlite", "sqlite_path": "keys.db"}}))

    def run(*argv: str) -> tuple[int, str]:
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = keys_main(["--config", str(cfg), *argv])
        return rc, buf.getvalue()

    rc, out = run("create", "--tenant", "acme", "--models", "m1,m2", "--rpm", "30", "--json")
    assert rc == 0
    created = orjson.loads(out)
    assert created["key"].startswith("gh-") and created["limits"] == {"rpm": 30}
    rc, out = run("list")
    assert rc == 0 and created["key_id"] in out and "active" in out and created["key"] not in out
    rc, out = run("revoke", created["key_id"])
    assert rc == 0
    rc, out = run("list", "--json")
    assert orjson.loads(out)[0]["revoked_at"] is not None
    assert run("revoke", "key_nope")[0] == 1
    assert keys_main(["create", "--tenant", "x"]) == 2  # no config


def test_cli_redis(tmp_path: Path, prefix: str) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"auth": {"store": "redis"}, "redis": {"url": REDIS_URL, "key_prefix": prefix}}))
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert keys_main(["--config", str(cfg), "create", "--tenant", "acme", "--json"]) == 0
    key = orjson.loads(buf.getvalue())["key"]

    async def check() -> None:
        r = aioredis.from_url(REDIS_URL)
        try:
            assert (await RedisKeyStore(r, prefix).lookup(key)) is not None
        finally:
            await r.aclose()

    asyncio.run(check())


async def test_admin_routes(tmp_path: Path) -> None:
    import httpx
    from starlette.applications import Starlette

    store = SQLiteKeyStore(tmp_path / "keys.db")
    app = Starlette(routes=admin_routes(store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/admin/keys", json={"tenant": "acme", "models": ["m1"], "limits": {"tpm": 500}})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["key"].startswith("gh-") and "sha256" not in body
        assert (await store.lookup(body["key"])).tenant == "acme"  # type: ignore[union-attr]
        r = await client.get("/admin/keys", params={"tenant": "acme"})
        assert [k["key_id"] for k in r.json()["data"]] == [body["key_id"]]
        assert "key" not in r.json()["data"][0]
        r = await client.post("/admin/keys", json={"tenant": "acme", "limits": {"rpm": -1}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limits"
        r = await client.post("/admin/keys", json={"tenant": "acme", "bogus": 1})
        assert r.status_code == 400
        r = await client.post("/admin/keys", content=b"{not json")
        assert r.status_code == 400
        r = await client.delete(f"/admin/keys/{body['key_id']}")
        assert r.status_code == 200 and r.json()["revoked"] is True
        r = await client.delete("/admin/keys/key_nope")
        assert r.status_code == 404
    await store.aclose()


def test_gateway_authenticates_managed_keys(tmp_path: Path) -> None:
    """Through the real app: a key created in the managed store works at once; revoked, it is refused."""
    support = pytest.importorskip("tests.support")
    import httpx

    db = tmp_path / "keys.db"
    settings = support.make_settings(
        [{"name": "demo", "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}],
        auth={"store": "sqlite", "sqlite_path": str(db)},
    )
    store = SQLiteKeyStore(db)
    nk = asyncio.run(store.create("acme", ["demo"]))
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    with support.gateway(settings) as (url, _app):
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {nk.key}"}, json=body)
        assert r.status_code == 200, r.text
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-test"}, json=body)
        assert r.status_code == 200  # config keys still work beside managed ones
        asyncio.run(store.revoke(nk.key_id))
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {nk.key}"}, json=body)
        assert r.status_code == 401

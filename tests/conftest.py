from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "GATEHOUSE_CACHE_DIR" not in os.environ:
    # exported ONNX encoders go to a per-run directory (gateways the tests start inherit it),
    # so every run exercises the export and nothing is left in the user's cache
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="gatehouse-test-cache-")
    os.environ["GATEHOUSE_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

from tests.support import FakeUpstream, ServerThread


@pytest.fixture(autouse=True)
def _close_console_clients() -> Iterator[None]:
    yield
    from tests.console_support import OPEN_CLIENTS

    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


REDIS_URL = os.environ.get("GATEHOUSE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def fake_upstream() -> Iterator[tuple[str, FakeUpstream]]:
    up = FakeUpstream()
    srv = ServerThread(up).start()
    try:
        yield srv.url, up
    finally:
        srv.stop()


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A per-test key prefix; every key under it is deleted afterwards (never FLUSHALL)."""
    import redis

    prefix = f"gh-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """Short name for ``redis_prefix`` (the keys, rate-limit and cache tests use it)."""
    return redis_prefix


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Any]:
    """An asyncio client of the shared test Redis; use keys under ``prefix`` only."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    yield r
    await r.aclose()

"""Scale-out: replicas sharing one Redis behave as one gateway.

1. Two independent limiter processes (own interpreter, own Redis client)
   hammer one key: exactly the limit is admitted.
2. Two real ``gatehouse serve`` processes with one config: a global rate limit
   holds across both (admitted == limit within the window, the rest 429 with
   Retry-After), and every request from both lands in the one Redis traffic
   stream exactly once.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis as sync_redis
import yaml

from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]


def _hammer(prefix: str, limit: int, n: int, start_at: float) -> int:
    """One 'replica': its own limiter and Redis client; returns how many it admitted."""
    import asyncio

    import redis.asyncio as aioredis

    from gateway.config import RateLimitSettings
    from gateway.ratelimit import RateLimiter, RedisBackend
    from gateway.types import Caller

    async def run() -> int:
        r = aioredis.from_url(REDIS_URL)
        lim = RateLimiter(RateLimitSettings(requests_per_minute=limit), RedisBackend(r, 60, 30), prefix=prefix)
        caller = Caller(tenant="t", key_id="shared")
        # start together: each replica checks in, then waits for the other
        await r.incr(prefix + "ready")
        while int(await r.get(prefix + "ready") or 0) < 2 and time.time() < start_at:
            await asyncio.sleep(0.005)
        admitted = 0
        for _ in range(n // 5):  # paced bursts of 5 concurrent checks, so the replicas interleave
            results = await asyncio.gather(*[lim.check(caller) for _ in range(5)])
            admitted += sum(d.allowed for d in results)
            await asyncio.sleep(0.01)
        await r.aclose()
        return admitted

    return asyncio.run(run())


def test_two_limiter_processes_share_one_limit(prefix: str) -> None:
    limit, per_process = 40, 60
    start_at = time.time() + 20.0  # latest start, if a replica never checks in
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_hammer, prefix, limit, per_process, start_at) for _ in range(2)]
        admitted = [f.result(timeout=30) for f in futs]
    assert sum(admitted) == limit, admitted
    assert all(a > 0 for a in admitted), f"both replicas should win some: {admitted}"


# --- two real gateway processes ------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    pypath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": pypath}
    env.pop("GATEHOUSE_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
        cwd=str(config.parent),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gateway not ready in {timeout}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # graceful: drains the traffic log
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_two_gateways_share_limit_and_traffic_stream(prefix: str, tmp_path: Path) -> None:
    pytest.importorskip("gateway.app")
    limit, total = 25, 60
    stream = prefix + "traffic"
    cfg = {
        "server": {"host": "127.0.0.1"},
        "auth": {"keys": [{"id": "k1", "tenant": "t1", "key": "sk-scale"}]},
        "redis": {"url": REDIS_URL, "key_prefix": prefix},
        "rate_limits": {"requests_per_minute": limit},
        "traffic_log": {"sink": "redis", "stream": stream, "batch_size": 16},
        "safety": {"backend": "none"},
        "routes": [{"name": "demo", "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}],
    }
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"gw{i}.log" for i in range(2)]
    procs = [start_gateway(config, p, log) for p, log in zip(ports, logs, strict=True)]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u, proc, log in zip(urls, procs, logs, strict=True):
            wait_ready(u, proc, log)

        def call(i: int) -> tuple[int, str, str | None]:
            r = httpx.post(
                urls[i % 2] + "/v1/chat/completions",
                headers={"authorization": "Bearer sk-scale"},
                json={"model": "demo", "messages": [{"role": "user", "content": f"hello {i}"}]},
                timeout=20,
            )
            return r.status_code, r.headers["x-request-id"], r.headers.get("retry-after")

        with cf.ThreadPoolExecutor(16) as ex:
            results = list(ex.map(call, range(total)))
        statuses = [s for s, _, _ in results]
        assert statuses.count(200) == limit, statuses
        assert statuses.count(429) == total - limit
        assert all(ra is not None and int(ra) >= 1 for s, _, ra in results if s == 429)
        # both replicas admitted some of the shared budget
        ok_by_replica = [sum(1 for i, (s, _, _) in enumerate(results) if s == 200 and i % 2 == k) for k in range(2)]
        assert all(ok_by_replica), ok_by_replica

        # one stream, every request exactly once (429s are traffic too)
        r = sync_redis.Redis.from_url(REDIS_URL)
        deadline = time.monotonic() + 10
        while r.xlen(stream) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        entries = r.xrange(stream)
        r.close()
        ids = []
        for _, fields in entries:
            raw = next(v for v in fields.values())
            ids.append(orjson.loads(raw)["request_id"])
        assert sorted(ids) == sorted(rid for _, rid, _ in results), f"{len(ids)} records for {total} requests"
    finally:
        for p in procs:
            stop(p)

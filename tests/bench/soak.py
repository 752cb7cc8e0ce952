"""Soak test: a real ``gatehouse serve`` under mixed, faulty traffic for a bounded time.

    python tests/bench/soak.py                 # 10 minutes
    python tests/bench/soak.py --seconds 60    # a quick check

Everything runs on loopback: a fake OpenAI-compatible upstream (tests/support.py,
behaviour keyed by model name) in this process, the gateway as a subprocess
(``python -m gateway serve --config <temp config>``), and N client workers.

Traffic mix: non-streaming and streaming chat, a slow upstream, an upstream
answering 503 (no fallback -> 502), one answering 500 with a fallback, a stream
the upstream drops mid-way, client disconnects (mid-stream and while waiting),
a key with a low rate limit (429s) and malformed requests (400s).

Report: gateway RSS (from /proc/<pid>/status) over time with a least-squares
trend after warm-up, outcomes by kind, and a check that the traffic log holds
exactly one record per request sent (after a graceful SIGTERM drain). Exit code
1 if records are missing/duplicated, the gateway died, or RSS grows faster than
``--max-growth-mb-per-min`` after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GOOD_KEY = "sk-soak"
LIMITED_KEY = "sk-soak-limited"
PROMPT = "please tell me a long story about the weather today, request {i}"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def trend(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope in MB per minute."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in samples) / var * 60


def gateway_config(upstream: str, log_path: Path) -> dict[str, Any]:
    def t(model: str, name: str) -> dict[str, Any]:
        return {"name": name, "provider": "openai", "base_url": upstream + "/v1", "model": model, "api_key": "sk-up",
                "timeouts": {"connect": 2, "first_token": 5, "total": 10}, "circuit": {"failures": 1000, "reset_seconds": 1}}

    return {
        "server": {"host": "127.0.0.1", "shutdown_timeout": 5},
        "auth": {
            "keys": [
                {"id": "soak", "tenant": "soak", "key": GOOD_KEY},
                {"id": "soak-limited", "tenant": "soak", "key": LIMITED_KEY, "scopes": ["limit:rpm=30"]},
            ]
        },
        "rate_limits": {"concurrent": 1000},  # enables the limiter; the limited key overrides rpm
        "traffic_log": {"sink": "jsonl", "path": str(log_path), "max_bytes": 1024 * 1024 * 1024},
        "safety": {"backend": "none"},
        "routes": [
            {"name": "chat", "targets": [t("echo", "echo")]},
            {"name": "slow", "targets": [t("slow:100", "slow")]},
            {"name": "wait", "targets": [t("slow:3000", "wait")]},
            {"name": "down", "targets": [t("error:503", "down")], "retries": {"attempts": 1, "backoff_base": 0.01}},
            {"name": "fallback", "targets": [t("error:500", "broken")], "fallbacks": [t("echo", "echo-fb")],
             "retries": {"attempts": 0}},
            {"name": "drop", "targets": [t("stream-then-drop", "drop")], "retries": {"attempts": 0}},
            {"name": "hang", "targets": [t("hang-stream", "hang")]},
        ],
    }


# scenario -> weight
MIX = {
    "chat": 30,
    "chat_stream": 25,
    "slow": 8,
    "down": 5,
    "fallback": 5,
    "drop_stream": 5,
    "disconnect_stream": 6,
    "disconnect_wait": 4,
    "rate_limited": 6,
    "bad_request": 6,
}


async def one(client: httpx.AsyncClient, base: str, scenario: str, i: int) -> str:
    """Run one request; return its outcome label."""
    url = base + "/v1/chat/completions"
    msgs = [{"role": "user", "content": PROMPT.format(i=i)}]
    auth = {"authorization": f"Bearer {GOOD_KEY}"}
    model = {"chat": "chat", "chat_stream": "chat", "slow": "slow", "down": "down", "fallback": "fallback",
             "drop_stream": "drop", "disconnect_stream": "hang", "disconnect_wait": "wait", "rate_limited": "chat"}.get(scenario, "chat")
    stream = scenario in ("chat_stream", "drop_stream", "disconnect_stream")
    if scenario == "rate_limited":
        auth = {"authorization": f"Bearer {LIMITED_KEY}"}
    if scenario == "bad_request":
        r = await client.post(url, headers={**auth, "content-type": "application/json"}, content=b'{"model": "chat", "messages": ')
        return f"{r.status_code}"
    body = {"model": model, "messages": msgs, "stream": stream}
    if scenario == "disconnect_wait":
        try:
            await client.post(url, headers=auth, json=body, timeout=0.3)
        except httpx.TimeoutException:
            return "client_disconnect"
        return "unexpected_complete"
    if not stream:
        r = await client.post(url, headers=auth, json=body)
        if r.status_code == 200:
            return "200"
        try:
            code = r.json()["error"].get("code")
        except Exception:
            code = None
        return f"{r.status_code}:{code}"
    async with client.stream("POST", url, headers=auth, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return f"{r.status_code}"
        if scenario == "disconnect_stream":
            async for _ in r.aiter_bytes():
                break  # first chunk, then hang up
            return "client_disconnect_stream"
        text = b""
        try:
            async for b in r.aiter_bytes():
                text += b
        except httpx.HTTPError:
            return "stream_broken"
        if b"[DONE]" in text and b'"error"' not in text:
            return "200_stream"
        return "stream_error_event"


async def drive(base: str, seconds: float, workers: int, pid: int, seed: int, sample_every: float) -> dict[str, Any]:
    rng = random.Random(seed)
    names, weights = zip(*MIX.items(), strict=True)
    outcomes: collections.Counter[str] = collections.Counter()
    sent = 0
    transport_errors = 0
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers)
    async with httpx.AsyncClient(timeout=20, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            nonlocal sent, transport_errors
            while time.monotonic() < deadline:
                scenario = rng.choices(names, weights)[0]
                sent += 1
                try:
                    outcomes[await one(client, base, scenario, sent)] += 1
                except httpx.HTTPError as exc:
                    transport_errors += 1
                    outcomes[f"transport:{type(exc).__name__}"] += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                v = rss_mb(pid)
                if v is not None:
                    rss.append((time.monotonic() - t0, v))
                await asyncio.sleep(sample_every)

        await asyncio.gather(sampler(), *[worker() for _ in range(workers)])
    return {"sent": sent, "transport_errors": transport_errors, "outcomes": dict(outcomes.most_common()), "rss": rss,
            "elapsed": time.monotonic() - t0}


def count_records(log_path: Path) -> tuple[int, int]:
    """(records, distinct request ids) over the log and its rotations."""
    from gatehouse_core.trafficlog import read_jsonl

    ids = [r["request_id"] for r in read_jsonl(log_path)]
    return len(ids), len(set(ids))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="traffic duration (default 600)")
    ap.add_argument("--workers", type=int, default=8, help="concurrent client workers")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sample-every", type=float, default=2.0, help="RSS sample interval, seconds")
    ap.add_argument("--warmup", type=float, default=0.25, help="fraction of the run ignored for the RSS trend")
    ap.add_argument("--max-growth-mb-per-min", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)

    from tests.support import FakeUpstream, ServerThread, free_port

    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-soak-"))
    upstream = ServerThread(FakeUpstream())
    # the fake upstream breaks streams on purpose; its tracebacks are expected noise
    logging.getLogger("uvicorn.error").disabled = True
    upstream.start()
    log_path = tmp / "traffic.jsonl"
    cfg_path = tmp / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(gateway_config(upstream.url, log_path)))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("GATEHOUSE_CONFIG", None)
    gw_log = (tmp / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg_path), "--port", str(port), "--log-level", "warning"],
        cwd=tmp, env=env, stdout=gw_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"seconds": args.seconds, "workers": args.workers, "dir": str(tmp)}
    ok = True
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gateway exited early; see {tmp / 'gateway.log'}")
            try:
                if httpx.get(base + "/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway not ready in 60 s")
            time.sleep(0.1)
        print(f"soak: gateway pid {proc.pid} on {base}; {args.seconds:.0f}s, {args.workers} workers", flush=True)
        res = asyncio.run(drive(base, args.seconds, args.workers, proc.pid, args.seed, args.sample_every))
        alive = proc.poll() is None
        report.update(res)
        report["gateway_alive_at_end"] = alive
        ok &= alive
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: the traffic log drains
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gw_log.close()
        upstream.stop()

    records, distinct = count_records(log_path)
    rss = report.get("rss", [])
    steady = [s for s in rss if s[0] >= args.seconds * args.warmup]
    slope = trend(steady)
    report.update({
        "records": records,
        "distinct_records": distinct,
        "records_match": records == distinct == report.get("sent"),
        "rss_start_mb": round(rss[0][1], 1) if rss else None,
        "rss_after_warmup_mb": round(steady[0][1], 1) if steady else None,
        "rss_end_mb": round(rss[-1][1], 1) if rss else None,
        "rss_max_mb": round(max(v for _, v in rss), 1) if rss else None,
        "rss_trend_mb_per_min": round(slope, 3),
        "gateway_exit_code": proc.returncode,
    })
    ok &= bool(report["records_match"]) and slope <= args.max_growth_mb_per_min
    rps = report.get("sent", 0) / max(report.get("elapsed", 1), 1e-9)

    print(f"\nrequests sent: {report.get('sent')} ({rps:.0f}/s), transport errors: {report.get('transport_errors')}")
    print("outcomes:")
    for k, v in report.get("outcomes", {}).items():
        print(f"  {k:<28} {v}")
    print(f"traffic records: {records} (distinct {distinct}) -> {'OK' if report['records_match'] else 'MISMATCH'}")
    print(f"gateway RSS MB: start {report['rss_start_mb']}, after warm-up {report['rss_after_warmup_mb']}, "
          f"end {report['rss_end_mb']}, max {report['rss_max_mb']}; trend after warm-up {slope:+.2f} MB/min "
          f"(limit {args.max_growth_mb_per_min})")
    print("RSS over time:", " ".join(f"{t:.0f}s={v:.0f}" for t, v in rss[:: max(1, len(rss) // 12)]))
    print("result:", "PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

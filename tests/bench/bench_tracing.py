"""Tracing overhead: gateway CPU per request with tracing off, sampling 0.01 and sampling 1.0.

A script, not a test. One run starts, each as its own process on loopback: the
benchmark's fast mock upstream (``bench_gateway.py``), a minimal OTLP/HTTP sink
(answers every export with 200, so the exporter does its full work), and three
Gatehouse gateways with the same config except ``tracing``: off, ``sample_ratio:
0.01`` and ``sample_ratio: 1.0`` (both exporting to the sink).

Round by round with the targets interleaved (drift on a shared machine hits all
alike), it runs ``--requests`` requests at concurrency ``--concurrency``, streaming
and not, and reads each gateway's process-tree CPU (utime+stime from /proc) over
the phase. Per-round CPU/request is reduced by the median across rounds; the
spread of the "off" rounds is printed as the noise band.

    python tests/bench/bench_tracing.py --requests 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_gateway as bg  # noqa: E402  (the sibling script: processes, upstream, phases)

VARIANTS = (("off", None), ("sample-0.01", 0.01), ("sample-1.0", 1.0))


def serve_collector(port: int) -> None:
    import uvicorn

    spans = {"n": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        spans["n"] += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def config(workdir: Path, upstream: str, name: str, ratio: float | None, collector: str) -> Path:
    import yaml

    path = bg.gateway_config(workdir, upstream)
    cfg = yaml.safe_load(path.read_text())
    cfg["traffic_log"]["path"] = str(workdir / f"traffic-{name}.jsonl")
    if ratio is not None:
        cfg["tracing"] = {"endpoint": collector + "/v1/traces", "sample_ratio": ratio}
    out = workdir / f"gatehouse-{name}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


async def bench(targets: list[bg.Target], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    import aiohttp

    per: dict[str, dict[str, list[float]]] = {t.name: {label: [] for label, _ in bg.PHASES} for t in targets}
    conn = aiohttp.TCPConnector(limit=256, limit_per_host=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for t in targets:
            for _, stream in bg.PHASES:
                r = await bg.run_phase(session, t, stream, args.warmup, 8, False)
                if r.errors:
                    raise RuntimeError(f"{t.name} warm-up failed: {r.first_error}")
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for label, stream in bg.PHASES:
                for t in order:
                    r = await bg.run_phase(session, t, stream, args.requests, args.concurrency, True)
                    if r.errors:
                        raise RuntimeError(f"{t.name} {label}: {r.errors} errors, first: {r.first_error}")
                    assert r.cpu_s is not None
                    per[t.name][label].append(r.cpu_s * 1000 / r.n)
                    print(f"round {rnd + 1} {label:9} {t.name:12} {r.n / r.wall_s:7.0f} req/s  cpu {r.cpu_s * 1000 / r.n:6.3f} ms/req", flush=True)
    return per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per phase and target (default 1000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--out", help="write JSON results here")
    ap.add_argument("--serve-collector", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_collector:
        serve_collector(args.serve_collector)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-tracing-"))
    procs = bg.Procs(workdir)
    py = sys.executable
    env = {"PYTHONPATH": str(bg.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    try:
        up_port, col_port = bg.free_port(), bg.free_port()
        upstream, collector = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{col_port}"
        up = procs.start("upstream", [py, str(HERE / "bench_gateway.py"), "--serve-upstream", str(up_port)], env)
        col = procs.start("collector", [py, str(Path(__file__).resolve()), "--serve-collector", str(col_port)], env)
        bg.wait_http(up, upstream + "/healthz", 30)
        bg.wait_http(col, collector + "/", 30)
        targets = []
        for name, ratio in VARIANTS:
            port = bg.free_port()
            cfg = config(workdir, upstream, name, ratio, collector)
            gw = procs.start(f"gatehouse-{name}", [py, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port),
                                                   "--log-level", "warning"], env)
            base = f"http://127.0.0.1:{port}"
            bg.wait_http(gw, base + "/healthz", 60)
            targets.append(bg.Target(name, base, "/v1/chat/completions", {"authorization": f"Bearer {bg.GATEWAY_KEY}"}, bg.MODEL, gw))
        t0 = time.time()
        per = bg.run_loop(bench(targets, args))
        rows = []
        summary: dict[str, dict[str, Any]] = {}
        for label, _ in bg.PHASES:
            off = statistics.median(per["off"][label])
            band = (min(per["off"][label]) / off - 1, max(per["off"][label]) / off - 1)
            for name, _ in VARIANTS:
                m = statistics.median(per[name][label])
                summary.setdefault(name, {})[label] = {"cpu_ms_per_req": m, "rounds": per[name][label], "vs_off": m / off - 1}
                rows.append(f"| {label} | {name} | {m:.3f} | {'–' if name == 'off' else f'{(m / off - 1) * 100:+.1f}%'} | "
                            f"{', '.join(f'{x:.3f}' for x in per[name][label])} |")
            summary["off"][label]["noise_band"] = band
            rows.append(f"| {label} | (off, round spread) | | {band[0] * 100:+.1f}% … {band[1] * 100:+.1f}% | |")
        table = "\n".join(["| phase | tracing | CPU ms/request (median) | vs off | per round |", "|---|---|---|---|---|", *rows])
        print()
        print(table)
        print(f"\n{args.rounds} rounds x {args.requests} requests at c={args.concurrency} per phase and target; "
              f"{os.cpu_count()} CPUs; took {time.time() - t0:.0f} s")
        if args.out:
            Path(args.out).write_text(json.dumps({"params": vars(args), "summary": summary, "markdown": table}, indent=2))
        return 0
    except Exception:
        for p in procs.items:
            print(f"--- {p.name} log tail ---\n{p.tail(15)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

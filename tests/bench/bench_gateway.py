"""Gateway overhead benchmark: Gatehouse vs a pass-through floor vs the LiteLLM proxy.

A script, not a test. One run starts, each as its own process on loopback:

1. a fast mock upstream (raw ASGI on uvicorn: OpenAI chat completions, a fixed
   16-word reply, non-streaming JSON or SSE streaming);
2. the Gatehouse gateway (``python -m gateway serve``; one route via provider
   ``openai``, jsonl traffic log, no policies, safety backend ``none``);
3. the pass-through floor (``tests/bench/passthrough_proxy.py``), on aiohttp's
   pool and on httpx's own pool;
4. the LiteLLM proxy (``litellm[proxy]`` installed into its own venv under
   ``~/.cache/gatehouse-bench``; reported as unavailable if that fails).

Then, round by round with the targets interleaved (so drift on a shared machine
hits every target alike), it measures from this process:

- latency at concurrency 1, non-streaming (total) and streaming (TTFB, total);
  "added" latency is the target's percentile minus the direct-to-upstream one
  measured in the same round;
- throughput at concurrency 32;
- the target process tree's CPU (utime+stime from /proc) over the c=32 phase,
  divided by the requests in it.

Per-round numbers are reduced by the median across rounds. Prints markdown
tables and writes JSON (``--out``).

    /tmp/gh-venv/bin/python tests/bench/bench_gateway.py --quick --skip-litellm
    /tmp/gh-venv/bin/python tests/bench/bench_gateway.py --out bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GATEHOUSE_BENCH_CACHE", Path.home() / ".cache" / "gatehouse-bench"))
LITELLM_VENV = CACHE / "litellm-venv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GATEWAY_KEY = "sk-bench"
MODEL = "bench"
REPLY_WORDS = "The quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches".split()
assert len(REPLY_WORDS) == 16


# ---- the mock upstream (runs in its own process: `bench_gateway.py --serve-upstream PORT`) ----------

async def read_request(scope: dict[str, Any], receive: Any, send: Any) -> bytes | None:
    """The mock upstreams' ASGI plumbing: answers lifespan and /healthz itself (None),
    otherwise returns the request body."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return None
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
        return None
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


def _upstream_app() -> Any:
    import orjson

    created = 1_700_000_000
    reply = " ".join(REPLY_WORDS)
    usage = {"prompt_tokens": 12, "completion_tokens": len(REPLY_WORDS), "total_tokens": 12 + len(REPLY_WORDS)}

    def completion(model: str) -> bytes:
        return orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        })

    def chunk(model: str, delta: dict[str, Any], finish: str | None = None, with_usage: bool = False) -> bytes:
        c: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if with_usage:
            c = {**c, "choices": [], "usage": usage}
        return b"data: " + orjson.dumps(c) + b"\n\n"

    cache: dict[tuple[str, bool], Any] = {}

    def events(model: str, include_usage: bool) -> list[bytes]:
        key = (model, include_usage)
        if key not in cache:
            evs = [chunk(model, {"role": "assistant", "content": ""})]
            evs += [chunk(model, {"content": (w if i == 0 else " " + w)}) for i, w in enumerate(REPLY_WORDS)]
            evs.append(chunk(model, {}, "stop"))
            if include_usage:
                evs.append(chunk(model, {}, with_usage=True))
            evs.append(b"data: [DONE]\n\n")
            cache[key] = evs
        return cache[key]

    bodies: dict[str, bytes] = {}
    json_headers = [(b"content-type", b"application/json")]
    sse_headers = [(b"content-type", b"text/event-stream")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_request(scope, receive, send)
        if body is None:
            return
        if not scope["path"].endswith("/chat/completions"):
            await send({"type": "http.response.start", "status": 404, "headers": json_headers})
            await send({"type": "http.response.body", "body": b'{"error":{"message":"not found","type":"invalid_request_error"}}'})
            return
        req = orjson.loads(body)
        model = str(req.get("model"))
        if not req.get("stream"):
            if model not in bodies:
                bodies[model] = completion(model)
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": bodies[model]})
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        for ev in events(model, include_usage):  # one write per event, like a real token stream
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(_upstream_app(), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="on")


# ---- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


class Procs:
    """Every process the benchmark starts; each leads its own process group, killed on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = open(log, "wb")
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd or ROOT, env={**os.environ, **(env or {})},
                             start_new_session=True)
        fh.close()
        proc = Proc(name, p, log)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10) -> None:
        p = proc.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # stragglers in the group (workers, helpers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            self.stop(proc)


def wait_http(proc: Proc, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} did not answer {url} within {timeout:.0f} s:\n{proc.tail()}")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants, plus children it has reaped (cutime/cstime)."""
    kids = _children()
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            f = stat[stat.rindex(")") + 2:].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
            todo.extend(kids.get(p, []))
    return total / CLK_TCK


# ---- targets --------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    base: str  # base URL; requests go to base + /v1/chat/completions (or /chat/completions for direct)
    path: str
    headers: dict[str, str]
    model: str
    proc: Proc | None = None
    note: str = ""
    door: str = "chat"  # chat | responses | messages: the request body and end-of-stream marker


def gateway_config(workdir: Path, upstream: str) -> Path:
    import yaml

    cfg = {
        "server": {"host": "127.0.0.1", "workers": 1},
        "auth": {"keys": [{"id": "bench", "tenant": "bench", "key": GATEWAY_KEY}]},
        "routes": [{"name": MODEL, "targets": [{"name": "mock-upstream", "provider": "openai", "base_url": upstream + "/v1",
                                                  "model": MODEL, "api_key": "sk-upstream"}]}],
        "traffic_log": {"sink": "jsonl", "path": str(workdir / "traffic.jsonl")},
        "safety": {"backend": "none"},
    }
    path = workdir / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def litellm_config(workdir: Path, upstream: str) -> Path:
    import yaml

    cfg = {
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream + "/v1",
                                                                "api_key": "sk-upstream"}}],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "json_logs": False, "turn_off_message_logging": True,
                             "drop_params": True, "callbacks": [], "success_callback": [], "failure_callback": []},
        "general_settings": {"master_key": GATEWAY_KEY, "disable_spend_logs": True, "disable_error_logs": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def ensure_litellm(log: Path) -> Path | None:
    """The `litellm` CLI from its own venv, installing `litellm[proxy]` on first use; None if that fails."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy] into {LITELLM_VENV} (first run; may take minutes) ...", flush=True)
    LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
    py = shutil.which("python3") or sys.executable
    steps = [
        [py, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "--upgrade", "pip"],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
    ]
    with open(log, "ab") as fh:
        for argv in steps:
            try:
                rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, timeout=1800, check=False).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"litellm install failed at {argv[:3]}: {exc}", flush=True)
                return None
            if rc != 0:
                print(f"litellm install failed at {' '.join(argv[:4])} (rc {rc}); see {log}", flush=True)
                return None
    return exe if exe.exists() else None


def litellm_version() -> str:
    py = LITELLM_VENV / "bin" / "python"
    with contextlib.suppress(Exception):
        out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip()
    return "?"


# ---- load generation -------------------------------------------------------------------------------

def request_body(stream: bool, door: str = "chat") -> bytes:
    """The same request on each door: a system prompt, one user turn, 64 tokens, temperature 0.2."""
    import orjson

    system, user = "You are terse.", "Say something in sixteen words."
    body: dict[str, Any]
    if door == "messages":
        body = {"model": MODEL, "system": system, "messages": [{"role": "user", "content": user}], "max_tokens": 64, "temperature": 0.2}
    elif door == "responses":
        body = {"model": MODEL, "instructions": system, "input": user, "max_output_tokens": 64, "temperature": 0.2}
    else:
        body = {"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "max_tokens": 64, "temperature": 0.2}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


STREAM_END = {"chat": b"[DONE]", "messages": b"message_stop", "responses": b"response.completed"}


@dataclass
class PhaseResult:
    n: int
    errors: int
    wall_s: float
    total_ms: list[float]
    ttfb_ms: list[float]
    cpu_s: float | None = None
    first_error: str | None = None


async def run_phase(session: Any, t: Target, stream: bool, n: int, conc: int, measure_cpu: bool) -> PhaseResult:
    body = request_body(stream, t.door).replace(b'"model":"bench"', b'"model":"' + t.model.encode() + b'"')
    url = t.base + t.path
    headers = {"content-type": "application/json", **t.headers}
    total: list[float] = []
    ttfb: list[float] = []
    errors = 0
    first_error: list[str] = []
    todo = iter(range(n))
    clock = time.perf_counter

    async def one() -> None:
        nonlocal errors
        t0 = clock()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if stream:
                    first = None
                    tail = b""
                    async for chunk in resp.content.iter_any():
                        if first is None:
                            first = clock()
                        tail = (tail + chunk)[-8192:]  # response.completed carries the whole response
                    ok = resp.status == 200 and STREAM_END[t.door] in tail
                    if first is not None:
                        ttfb.append((first - t0) * 1000)
                    if not ok and not first_error:
                        first_error.append(f"HTTP {resp.status}: ...{tail[-64:]!r}")
                else:
                    data = await resp.read()
                    ok = resp.status == 200 and b"quietly judge" in data
                    if not ok and not first_error:
                        first_error.append(f"HTTP {resp.status}: {data[:200]!r}")
        except Exception as exc:
            ok = False
            if not first_error:
                first_error.append(f"{type(exc).__name__}: {exc}")
        total.append((clock() - t0) * 1000)
        if not ok:
            errors += 1

    async def worker() -> None:
        for _ in todo:
            await one()

    pid = t.proc.popen.pid if t.proc else None
    c0 = cpu_seconds(pid) if (measure_cpu and pid) else None
    w0 = clock()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = clock() - w0
    cpu = cpu_seconds(pid) - c0 if (c0 is not None and pid) else None
    return PhaseResult(n, errors, wall, total, ttfb, cpu, first_error[0] if first_error else None)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# ---- the benchmark ---------------------------------------------------------------------------------

PHASES = (("nonstream", False), ("stream", True))


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when it is installed (it ships with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@dataclass
class Results:
    rounds: list[dict[str, dict[str, dict[str, Any]]]] = field(default_factory=list)  # round -> target -> phase -> metrics


async def bench(targets: list[Target], upstream_proc: Proc, args: argparse.Namespace) -> Results:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=256, limit_per_host=0)
    res = Results()
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        # warm-up: connections, imports, JIT-ish caches in every target
        for t in targets:
            for _, stream in PHASES:
                r = await run_phase(session, t, stream, args.warmup, 8, False)
                if r.errors:
                    raise RuntimeError(f"{t.name} warm-up ({'stream' if stream else 'non-stream'}) failed: {r.first_error}")
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]  # rotate who goes first
            per: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in targets}
            for label, stream in PHASES:
                for t in order:
                    lat = await run_phase(session, t, stream, args.latency_requests, 1, False)
                    thr = await run_phase(session, t, stream, t_requests(t, args), args.concurrency, True)
                    per[t.name][label] = {
                        "c1": {"n": lat.n, "errors": lat.errors, "p50_ms": pct(lat.total_ms, 50), "p99_ms": pct(lat.total_ms, 99),
                               "ttfb_p50_ms": pct(lat.ttfb_ms, 50) if stream else None,
                               "ttfb_p99_ms": pct(lat.ttfb_ms, 99) if stream else None},
                        "c32": {"n": thr.n, "errors": thr.errors, "rps": thr.n / thr.wall_s, "wall_s": thr.wall_s,
                                "cpu_s": thr.cpu_s, "cpu_ms_per_req": (thr.cpu_s * 1000 / thr.n) if thr.cpu_s is not None else None,
                                "p50_ms": pct(thr.total_ms, 50), "p99_ms": pct(thr.total_ms, 99)},
                        "first_error": lat.first_error or thr.first_error,
                    }
                    cpu = per[t.name][label]["c32"]["cpu_ms_per_req"]
                    print(f"  round {rnd + 1} {label:9s} {t.name:20s} c1 p50 {per[t.name][label]['c1']['p50_ms']:7.2f} ms  "
                          f"c{args.concurrency} {per[t.name][label]['c32']['rps']:7.0f} req/s  "
                          f"cpu {cpu if cpu is not None else float('nan'):6.3f} ms/req  errors {lat.errors + thr.errors}", flush=True)
            res.rounds.append(per)
    return res


def t_requests(t: Target, args: argparse.Namespace) -> int:
    return args.litellm_requests if t.name == "litellm" else args.requests


def med(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None and x == x]
    return statistics.median(ys) if ys else None


def summarize(res: Results, names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Median across rounds of each per-round number; added latency is per round vs direct."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        out[name] = {}
        for label, stream in PHASES:
            rows = [r[name][label] for r in res.rounds]
            direct = [r["direct"][label] for r in res.rounds]
            s: dict[str, Any] = {
                "p50_ms": med([x["c1"]["p50_ms"] for x in rows]),
                "p99_ms": med([x["c1"]["p99_ms"] for x in rows]),
                "added_p50_ms": med([x["c1"]["p50_ms"] - d["c1"]["p50_ms"] for x, d in zip(rows, direct, strict=False)]),
                "added_p99_ms": med([x["c1"]["p99_ms"] - d["c1"]["p99_ms"] for x, d in zip(rows, direct, strict=False)]),
                "rps": med([x["c32"]["rps"] for x in rows]),
                "cpu_ms_per_req": med([x["c32"]["cpu_ms_per_req"] for x in rows]),
                "cpu_ms_per_req_rounds": [x["c32"]["cpu_ms_per_req"] for x in rows],
                "c32_p50_ms": med([x["c32"]["p50_ms"] for x in rows]),
                "errors": sum(x["c1"]["errors"] + x["c32"]["errors"] for x in rows),
                "requests": sum(x["c1"]["n"] + x["c32"]["n"] for x in rows),
            }
            if stream:
                s["ttfb_p50_ms"] = med([x["c1"]["ttfb_p50_ms"] for x in rows])
                s["ttfb_p99_ms"] = med([x["c1"]["ttfb_p99_ms"] for x in rows])
                s["added_ttfb_p50_ms"] = med([x["c1"]["ttfb_p50_ms"] - d["c1"]["ttfb_p50_ms"] for x, d in zip(rows, direct, strict=False)])
                s["added_ttfb_p99_ms"] = med([x["c1"]["ttfb_p99_ms"] - d["c1"]["ttfb_p99_ms"] for x, d in zip(rows, direct, strict=False)])
            out[name][label] = s
    # ratios need every target's CPU first
    for name in names:
        for label, _ in PHASES:
            floor = out.get("passthrough-aiohttp", {}).get(label, {}).get("cpu_ms_per_req")
            lite = out.get("litellm", {}).get(label, {}).get("cpu_ms_per_req")
            mine = out[name][label]["cpu_ms_per_req"]
            out[name][label]["cpu_x_floor"] = (mine / floor) if (mine and floor and name != "direct") else None
            out[name][label]["litellm_cpu_over_this"] = (lite / mine) if (mine and lite and name != "direct") else None
    return out


def fmt(x: float | None, nd: int = 2, suffix: str = "") -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.{nd}f}{suffix}"


def markdown(summary: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    lines: list[str] = []
    c = args.concurrency
    lines.append("### Non-streaming")
    lines.append("")
    lines.append(f"| target | p50 ms (c=1) | p99 ms (c=1) | added p50 ms | added p99 ms | req/s (c={c}) | CPU ms/req | CPU × floor | LiteLLM CPU ÷ this |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        x = s["nonstream"]
        direct = name == "direct"
        lines.append(f"| {name} | {fmt(x['p50_ms'])} | {fmt(x['p99_ms'])} | {'–' if direct else fmt(x['added_p50_ms'])} | "
                     f"{'–' if direct else fmt(x['added_p99_ms'])} | {fmt(x['rps'], 0)} | {fmt(x['cpu_ms_per_req'], 3)} | "
                     f"{fmt(x['cpu_x_floor'], 2, '×')} | {fmt(x['litellm_cpu_over_this'], 1, '×')} |")
    lines.append("")
    lines.append("### Streaming (SSE, 16 content chunks + role/finish/usage/[DONE])")
    lines.append("")
    lines.append(f"| target | TTFB p50 ms | added TTFB p50 | added TTFB p99 | total p50 ms | added total p50 | added total p99 | "
                 f"req/s (c={c}) | CPU ms/req | CPU × floor | LiteLLM CPU ÷ this |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        x = s["stream"]
        d = name == "direct"
        lines.append(f"| {name} | {fmt(x['ttfb_p50_ms'])} | {'–' if d else fmt(x['added_ttfb_p50_ms'])} | "
                     f"{'–' if d else fmt(x['added_ttfb_p99_ms'])} | {fmt(x['p50_ms'])} | {'–' if d else fmt(x['added_p50_ms'])} | "
                     f"{'–' if d else fmt(x['added_p99_ms'])} | {fmt(x['rps'], 0)} | {fmt(x['cpu_ms_per_req'], 3)} | "
                     f"{fmt(x['cpu_x_floor'], 2, '×')} | {fmt(x['litellm_cpu_over_this'], 1, '×')} |")
    lines.append("")
    lines.append("`direct` is the mock upstream itself (its CPU is the upstream's). \"added\" = target − direct, per round, median of rounds. "
                 f"CPU = utime+stime of the target's process tree over the c={c} phase ÷ requests. Floor = `passthrough-aiohttp`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per c=32 phase (default 2000)")
    ap.add_argument("--latency-requests", type=int, default=None, help="requests per c=1 phase (default requests/4)")
    ap.add_argument("--litellm-requests", type=int, default=None, help="requests per c=32 phase for LiteLLM (default min(requests, 1000))")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--skip-httpx", action="store_true", help="skip the httpx-pool pass-through variant")
    ap.add_argument("--quick", action="store_true", help="400 requests, 2 rounds: a smoke run")
    ap.add_argument("--out", help="write JSON results here")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with configs and process logs")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.quick:
        args.requests = min(args.requests, 400)
        args.rounds = min(args.rounds, 2)
        args.warmup = min(args.warmup, 40)
    args.latency_requests = args.latency_requests or max(50, args.requests // 4)
    args.litellm_requests = args.litellm_requests or min(args.requests, 1000)

    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
    procs = Procs(workdir)
    py = sys.executable
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    notes: dict[str, str] = {}
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        up = procs.start("upstream", [py, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)], env)
        wait_http(up, upstream + "/healthz", 30)
        targets = [Target("direct", upstream, "/v1/chat/completions", {}, MODEL, up)]

        gw_port = free_port()
        cfg = gateway_config(workdir, upstream)
        gw = procs.start("gatehouse", [py, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(gw_port), "--log-level", "warning"], env)
        gw_base = f"http://127.0.0.1:{gw_port}"
        wait_http(gw, gw_base + "/healthz", 60)
        targets.append(Target("gatehouse", gw_base, "/v1/chat/completions", {"authorization": f"Bearer {GATEWAY_KEY}"}, MODEL, gw))
        # the other two doors of the same gateway process (its CPU is measured per phase)
        targets.append(Target("gatehouse-responses", gw_base, "/v1/responses", {"authorization": f"Bearer {GATEWAY_KEY}"}, MODEL, gw, door="responses"))
        targets.append(Target("gatehouse-messages", gw_base, "/v1/messages", {"x-api-key": GATEWAY_KEY}, MODEL, gw, door="messages"))

        for client in ("aiohttp", "httpx"):
            if client == "httpx" and args.skip_httpx:
                continue
            port = free_port()
            p = procs.start(f"passthrough-{client}", [py, str(HERE / "passthrough_proxy.py"), "--upstream", upstream, "--port", str(port),
                                                      "--client", client], env)
            wait_http(p, f"http://127.0.0.1:{port}/healthz", 30)
            targets.append(Target(f"passthrough-{client}", f"http://127.0.0.1:{port}", "/v1/chat/completions",
                                  {"authorization": "Bearer sk-upstream"}, MODEL, p))

        if args.skip_litellm:
            notes["litellm"] = "skipped (--skip-litellm)"
        else:
            exe = ensure_litellm(workdir / "litellm-install.log")
            if exe is None:
                notes["litellm"] = "unavailable: install failed"
                print("LiteLLM unavailable (install failed); continuing without it", flush=True)
            else:
                port = free_port()
                lcfg = litellm_config(workdir, upstream)
                lenv = {**env, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                        "LITELLM_MODE": "PRODUCTION", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True", "NO_REDOC": "True",
                        "DATABASE_URL": "", "PYTHONPATH": ""}
                lenv.pop("DATABASE_URL")
                lp = procs.start("litellm", [str(exe), "--config", str(lcfg), "--host", "127.0.0.1", "--port", str(port),
                                             "--num_workers", "1"], lenv, cwd=workdir)
                try:
                    wait_http(lp, f"http://127.0.0.1:{port}/health/liveliness", 240)
                    targets.append(Target("litellm", f"http://127.0.0.1:{port}", "/v1/chat/completions",
                                          {"authorization": f"Bearer {GATEWAY_KEY}"}, MODEL, lp))
                    notes["litellm"] = f"litellm {litellm_version()}"
                except (RuntimeError, TimeoutError) as exc:
                    notes["litellm"] = f"unavailable: did not start ({str(exc).splitlines()[0]})"
                    print(f"LiteLLM unavailable: {exc}", flush=True)
                    procs.stop(lp)

        print(f"targets: {', '.join(t.name for t in targets)}; rounds {args.rounds}; c=1 x {args.latency_requests}, "
              f"c={args.concurrency} x {args.requests} (litellm {args.litellm_requests}) per phase", flush=True)
        t0 = time.time()
        res = run_loop(bench(targets, up, args))
        bench_s = time.time() - t0
        names = [t.name for t in targets]
        summary = summarize(res, names)
        table = markdown(summary, args)
        print()
        print(table)
        errs = {n: sum(summary[n][lab]["errors"] for lab, _ in PHASES) for n in names}
        if any(errs.values()):
            print(f"\nERRORS: {errs}")
            for r in res.rounds:
                for n in names:
                    for lab, _ in PHASES:
                        if r[n][lab]["first_error"]:
                            print(f"  {n} {lab}: {r[n][lab]['first_error']}")
        for k, v in notes.items():
            print(f"note: {k}: {v}")
        print(f"\nbenchmark phases took {bench_s:.0f} s")
        if args.out:
            doc = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                "params": {k: v for k, v in vars(args).items() if k != "serve_upstream"},
                "notes": notes,
                "summary": summary,
                "rounds": res.rounds,
                "bench_seconds": bench_s,
                "total_seconds": time.time() - started,
                "markdown": table,
            }
            Path(args.out).write_text(json.dumps(doc, indent=2))
            print(f"wrote {args.out}")
        # LiteLLM's own occasional 500s are reported, not fatal: the exit status is about our side
        return 1 if any(v for n, v in errs.items() if n != "litellm") else 0
    finally:
        procs.stop_all()
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

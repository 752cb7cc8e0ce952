"""Adversarial benchmark (#17): does any single request stall the demo gateway?

A script, not a test (reuses ``bench_gateway.py``'s process helpers). One run:

1. starts the demo gateway, ``python -m gateway serve --demo`` (the demo policy with its
   ``categories`` safety scorer, PII, recitation index; the mock ``echo`` model), on a free
   port in a temp dir, and warms it up (one request per door, embeddings, a 100-message chat);
2. **idle**: a sampler process asks ``/healthz`` every ``--interval-ms`` for ``--idle-seconds``
   (default 35 s, longer than the loop-lag gauge's 30 s window, so the gauge scraped at the
   end covers idle time only);
3. **loaded**: fires every adversarial input of issue #17 at once (see ``ATTACKS``: 1,000- and
   10,000-message chats, 2,000-input embeddings, 400 KB and 190 KB ``"12 34 "`` PII bodies,
   16 clients sending 100-message requests, deep nesting, a 100 KB model name, a 10 MB
   feedback, a 32 MB request header, an admin template with a 10,000 x 10,000 loop, a ~1 MB
   whole reply, the Messages and Responses doors with 1,000 items, ...) plus a harmful probe
   repeated during the load, while the same sampler asks ``/healthz`` and ``/metrics`` is
   scraped every second;
4. prints ``/healthz`` latency p50/p99/max idle and loaded and their ratio, the worst
   ``gatehouse_event_loop_lag_seconds`` scraped in each phase, the shed and fail-open
   counters, and the status codes (and error codes) each input got;
5. **serialisation**: times, in this process, ``orjson.dumps`` of a whole chat reply of about
   1 MB and the Messages/Responses doors' rendering of it: what the gateway spends on the
   event loop turning one large reply into bytes.

No timed asserts: numbers and ratios. Exit status 1 only if an input got a 5xx other than
503 ``overloaded`` (a shed), or a harmful probe was answered 200.

    PYTHONPATH=$PWD .venv/bin/python tests/bench/bench_adversarial.py [--out adversarial.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gateway import ROOT, Procs, free_port, pct, run_loop, wait_http  # noqa: E402

KEY = "sk-gatehouse-demo"
ADMIN_KEY = "sk-gatehouse-admin"
HARMFUL = "I hate all immigrants, they are vermin"  # the README's blocked example
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


# ---- the /healthz sampler (its own process, so the load generator cannot delay it) ---------------

def _sampler(port: int, interval: float, stop: Any, out: Any) -> None:
    samples: list[tuple[float, float, int]] = []  # (start offset s, latency ms, status or -1)
    t_start = time.monotonic()
    conn: http.client.HTTPConnection | None = None
    ready = False
    while not stop.is_set():
        t0 = time.monotonic()
        status = -1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
        t1 = time.monotonic()
        samples.append((t0 - t_start, (t1 - t0) * 1000, status))
        if not ready:
            out.put("ready")  # the caller starts its load only once sampling runs
            ready = True
        stop.wait(max(0.0, interval - (t1 - t0)))
    if conn is not None:
        conn.close()
    out.put(samples)


class Sampler:
    def __init__(self, port: int, interval: float) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=_sampler, args=(port, interval, self.stop, self.queue), daemon=True)

    def __enter__(self) -> Sampler:
        self.proc.start()
        if self.queue.get(timeout=120) != "ready":
            raise RuntimeError("the /healthz sampler did not start")
        return self

    def finish(self) -> list[tuple[float, float, int]]:
        self.stop.set()
        samples = self.queue.get(timeout=600)
        self.proc.join(30)
        return samples

    def __exit__(self, *exc: Any) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def lat_summary(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    ms = [s[1] for s in samples]
    return {"n": len(ms), "failed": sum(1 for s in samples if s[2] != 200), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
            "max_ms": max(ms) if ms else float("nan"), "mean_ms": statistics.fmean(ms) if ms else float("nan")}


# ---- the adversarial inputs ------------------------------------------------------------------------

@dataclass
class Attack:
    name: str
    what: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    clients: int = 1  # concurrent clients sending it
    repeat: int = 1  # requests per client, one after the other
    raw_header_bytes: int = 0  # instead of a body: a request header this large (raw socket)
    results: list[tuple[int, str, float]] = field(default_factory=list)  # (status, error code, seconds)


def _dumps(x: Any) -> bytes:
    import orjson

    return orjson.dumps(x)


def chat(messages: list[dict[str, Any]], **extra: Any) -> bytes:
    return _dumps({"model": "demo", "messages": messages, **extra})


def short_messages(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Could you suggest a good book about gardening? This is {tag} note {i}."}
            for i in range(n)]


def nested(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels (as bytes: orjson itself stops at 255)."""
    return b'{"k":' * depth + b'"x"' + b"}" * depth


def attacks(big_reply_chars: int, run: str) -> list[Attack]:
    """Every input of #17; ``run`` varies the texts, so no phase is served from an earlier one's caches."""
    part = (f"The garden path ({run}) winds past the old stone wall, where ivy climbs toward the light. " * 3000)[:200_000]
    reply_parts = [{"type": "text", "text": part} for _ in range(max(1, big_reply_chars // 200_000))]
    template = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
    admin = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    return [
        Attack("chat-1000-messages", "chat, 1,000 short messages (~50 KB; under max_messages, over the demo's max_checked_texts)",
               "POST", "/v1/chat/completions", chat(short_messages(1000, run + "a"))),
        Attack("chat-500-messages", "chat, 500 short messages (under the demo's max_checked_texts: checked)", "POST",
               "/v1/chat/completions", chat(short_messages(500, run + "h"))),
        Attack("embeddings-500-inputs", "embeddings, 500 inputs (under max_checked_texts: checked)", "POST", "/v1/embeddings",
               _dumps({"model": "minilm", "input": [f"input number {i} about ponds ({run})" for i in range(500)]})),
        Attack("chat-10000-messages", "chat, 10,000 short messages", "POST", "/v1/chat/completions", chat(short_messages(10_000, run + "b"))),
        Attack("embeddings-2000-inputs", "embeddings, 2,000 inputs (minilm route)", "POST", "/v1/embeddings",
               _dumps({"model": "minilm", "input": [f"input number {i} about gardens ({run})" for i in range(2000)]})),
        Attack("pii-400KB", '400 KB of "12 34 " in one message', "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": run + " " + "12 34 " * 68_000}])),
        Attack("pii-190KB", '190 KB of "12 34 " (under max_text_chars: scanned)', "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": run + " " + "12 34 " * 32_000}])),
        Attack("16x100-messages", "16 clients, each 4 x a 100-message chat", "POST", "/v1/chat/completions",
               chat(short_messages(100, run + "c")), clients=16, repeat=4),
        Attack("deep-nesting-1000", "a pass-through field nested 1,000 levels", "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": "hi"}])[:-1] + b',"metadata":' + nested(1000) + b"}"),
        Attack("deep-messages-300", "messages nested 300 levels", "POST", "/v1/chat/completions",
               b'{"model":"demo","messages":' + b"[" * 300 + b"]" * 300 + b"}"),
        Attack("model-100KB", "a 100 KB model name", "POST", "/v1/chat/completions",
               _dumps({"model": "m" * 100_000, "messages": [{"role": "user", "content": "hi"}]})),
        Attack("chat-10MB", "a 10 MB chat body", "POST", "/v1/chat/completions", chat([{"role": "user", "content": "y" * 10_000_000}])),
        Attack("feedback-10MB", "a 10 MB feedback body", "POST", "/v1/feedback",
               _dumps({"request_id": "req_x", "score": 1, "metadata": {"blob": "z" * 10_000_000}})),
        Attack("feedback-deep", "feedback metadata nested 1,000 levels", "POST", "/v1/feedback",
               b'{"request_id":"req_x","score":1,"metadata":' + nested(1000) + b"}"),
        Attack("header-32MB", "a 32 MB request header to /healthz", "GET", "/healthz", raw_header_bytes=32 * 1024 * 1024),
        Attack("admin-template-1e8", "admin: push a 10,000 x 10,000 loop template, then render it", "POST", "/admin/prompts",
               _dumps({"id": f"adv-loop-{run}", "messages": [{"role": "system", "template": template}]}), headers=admin),
        Attack("render-template-1e8", "chat using that prompt (renders it)", "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": "hi"}], prompt={"id": f"adv-loop-{run}"})),
        Attack("admin-2MB", "a 2 MB admin body", "POST", "/admin/prompts",
               _dumps({"id": f"adv-big-{run}", "messages": [{"role": "system", "template": "t" * 2_000_000}]}), headers=admin),
        Attack("messages-1000", "Messages door, 1,000 messages", "POST", "/v1/messages",
               _dumps({"model": "demo", "max_tokens": 16, "messages": short_messages(1000, run + "d")}),
               headers={"x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"}),
        Attack("messages-10000", "Messages door, 10,000 messages", "POST", "/v1/messages",
               _dumps({"model": "demo", "max_tokens": 16, "messages": short_messages(10_000, run + "e")}),
               headers={"x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"}),
        Attack("responses-1000", "Responses door, 1,000 input items", "POST", "/v1/responses",
               _dumps({"model": "demo", "input": short_messages(1000, run + "f")})),
        Attack("typed-part-pii", "an input_text part with an email (redacted, not passed)", "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": [{"type": "input_text", "text": "mail me at bob.private@example.com"}]}])),
        Attack("unknown-part", "a content part type the gateway cannot read", "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": [{"type": "video", "video": {"url": "x"}}]}])),
        Attack("reply-1MB", f"a whole reply of ~{big_reply_chars // 1000} KB (echo of {len(reply_parts)} x 200 KB parts)", "POST",
               "/v1/chat/completions", chat([{"role": "user", "content": reply_parts}])),
        Attack("stream-1000-messages", "streamed chat, 1,000 messages", "POST", "/v1/chat/completions",
               chat(short_messages(1000, run + "g"), stream=True)),
        Attack("harmful-probe", "the README's harmful request, 8 clients x 4 during the load", "POST", "/v1/chat/completions",
               chat([{"role": "user", "content": HARMFUL}]), clients=8, repeat=4),
    ]


def error_code(data: bytes) -> str:
    if len(data) > 65536:
        return ""
    try:
        doc = json.loads(data)
    except ValueError:
        return data[:60].decode(errors="replace") if data else ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return str(err.get("code") or err.get("type") or "")
    return ""


async def raw_header(port: int, size: int) -> tuple[int, str]:
    """Send a request whose header is ``size`` bytes; return the status the server answered with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read(4096))  # the server may answer (and close) mid-header
    sent = 0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        chunk = b"a" * 16384
        with contextlib.suppress(ConnectionError):
            while sent < size and not answer.done():
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                await asyncio.sleep(0.001)  # let an early answer arrive before a reset can discard it
            if not answer.done():
                writer.write(b"\r\n\r\n")
                await writer.drain()
        try:
            head = await asyncio.wait_for(answer, 60)
        except ConnectionError:
            head = b""
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not head.startswith(b"HTTP/1.1 "):
        return -1, f"closed without an answer after {sent // 1024} KB"
    status = int(head[9:12])
    body = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
    return status, error_code(body) + f" (after {sent // 1024} KB sent)"


async def fire(session: Any, base: str, port: int, a: Attack) -> None:
    async def client() -> None:
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            try:
                if a.raw_header_bytes:
                    status, code = await raw_header(port, a.raw_header_bytes)
                else:
                    async with session.request(a.method, base + a.path, data=a.body, headers=a.headers) as r:
                        data = await r.read()
                        status, code = r.status, error_code(data) if r.status >= 400 else ""
                        if r.status == 503:
                            code += f" retry-after={r.headers.get('retry-after')}"
                        if r.status == 200 and a.name == "typed-part-pii":
                            code = "redacted" if b"bob.private@example.com" not in data else "NOT REDACTED"
            except Exception as exc:  # a reset connection is an answer too (e.g. the 413 on a body still being sent)
                status, code = -1, f"{type(exc).__name__}: {str(exc)[:80]}"
            a.results.append((status, code, time.perf_counter() - t0))

    await asyncio.gather(*(client() for _ in range(a.clients)))


# ---- /metrics --------------------------------------------------------------------------------------

WATCH = ("gatehouse_event_loop_lag_seconds", "gatehouse_guardrail_shed_total", "gatehouse_guardrail_fail_open_total",
         "gatehouse_guardrail_texts_in_flight")


async def scrape(session: Any, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in WATCH:
            out[name] += float(line.rsplit(" ", 1)[1])  # summed over labels
    return dict(out)


async def scraper(session: Any, base: str, stop: asyncio.Event, every: float) -> list[tuple[float, dict[str, float]]]:
    got: list[tuple[float, dict[str, float]]] = []
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            got.append((time.monotonic() - t0, await scrape(session, base)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            with contextlib.suppress(Exception):
                got.append((time.monotonic() - t0, await scrape(session, base)))
            return got


# ---- serialisation of a large whole reply -----------------------------------------------------------

def serialisation(chars: int, reps: int = 15) -> dict[str, Any]:
    """ms to turn one whole reply of ~``chars`` UTF-8 bytes into bytes, per door: median and max of
    ``reps``, each on a fresh string (CPython caches a str's UTF-8 form after the first encoding)."""
    import orjson

    from gateway.protocols import anthropic, responses

    units = {"ascii": "The garden path winds past the old stone wall, where ivy climbs toward the light. ",
             "japanese": "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"}
    req = {"model": "demo", "input": "hi"}

    def reply(text: str) -> dict[str, Any]:
        return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "echo",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None}, "logprobs": None,
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    renders = {"chat": lambda r: orjson.dumps(r), "messages": lambda r: orjson.dumps(anthropic.reply_from_core(r, "demo")),
               "responses": lambda r: orjson.dumps(responses.response_from_core("resp_x", req, r, "demo"))}
    out: dict[str, Any] = {}
    for lang, unit in units.items():
        base = unit * (chars // len(unit.encode()) + 1)
        for door, render in renders.items():
            xs = []
            for i in range(reps):
                r = reply(base + str(i))  # fresh string
                t0 = time.perf_counter()
                body = render(r)
                xs.append((time.perf_counter() - t0) * 1000)
            out[f"{door}/{lang}"] = {"median_ms": statistics.median(xs), "max_ms": max(xs), "bytes": len(body)}
    return out


# ---- the run ----------------------------------------------------------------------------------------

async def fire_alone(s: Any, base: str, port: int, a: Attack, interval: float) -> dict[str, Any]:
    """One input with nothing else in flight, /healthz sampled around it: which input stalls?"""
    with Sampler(port, interval) as smp:
        t0 = time.monotonic()
        await fire(s, base, port, a)
        took = time.monotonic() - t0
        await asyncio.sleep(0.2)
        samples = smp.finish()
    return {**attack_row(a), "took_s": took, "healthz": lat_summary(samples)}


def attack_row(a: Attack) -> dict[str, Any]:
    return {"name": a.name, "what": a.what, "requests": len(a.results),
            "statuses": dict(collections.Counter(f"{st} {code}".strip() for st, code, _ in a.results)),
            "max_s": max((x[2] for x in a.results), default=float("nan"))}


async def bench(base: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    interval = args.interval_ms / 1000
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        # warm-up: the first requests after start (lazy model loads, first-call paths), each alone
        warm = [Attack("first-chat", "first chat request after start", "POST", "/v1/chat/completions",
                       chat([{"role": "user", "content": "hello, warming up"}])),
                Attack("first-100-messages", "first 100-message chat", "POST", "/v1/chat/completions", chat(short_messages(100, "w"))),
                Attack("first-embeddings", "first embeddings request", "POST", "/v1/embeddings", _dumps({"model": "minilm", "input": ["warm up"]})),
                Attack("first-responses", "first Responses request", "POST", "/v1/responses", _dumps({"model": "demo", "input": "hello"})),
                Attack("first-messages", "first Messages request", "POST", "/v1/messages",
                       _dumps({"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}),
                       headers={"x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01"})]
        warmup = [await fire_alone(s, base, port, a, interval) for a in warm]
        for w in warmup:
            if not all(k.startswith("200") for k in w["statuses"]):
                raise RuntimeError(f"warm-up {w['name']} failed: {w['statuses']}")
        solo: list[dict[str, Any]] = []
        if not args.skip_alone:
            print("alone phase: each input with nothing else in flight", flush=True)
            for a in attacks(args.reply_chars, "solo"):
                solo.append(await fire_alone(s, base, port, a, interval))
                print(f"  {a.name:24s} {solo[-1]['statuses']}  /healthz max {solo[-1]['healthz']['max_ms']:.0f} ms", flush=True)
        print(f"idle phase: /healthz every {args.interval_ms:.0f} ms for {args.idle_seconds:.0f} s", flush=True)
        with Sampler(port, interval) as smp:
            await asyncio.sleep(args.idle_seconds)
            idle = smp.finish()
        m_idle = await scrape(s, base)

        todo = attacks(args.reply_chars, "load")
        # the template must exist before the chat that renders it
        first = [a for a in todo if a.name == "admin-template-1e8"]
        rest = [a for a in todo if a.name != "admin-template-1e8"]
        print(f"loaded phase: {len(todo)} adversarial inputs at once, {sum(a.clients * a.repeat for a in todo)} requests", flush=True)
        stop = asyncio.Event()
        with Sampler(port, interval) as smp:
            scr = asyncio.create_task(scraper(s, base, stop, 1.0))
            t0 = time.monotonic()
            for a in first:
                await fire(s, base, port, a)
            await asyncio.gather(*(fire(s, base, port, a) for a in rest))
            load_s = time.monotonic() - t0
            await asyncio.sleep(1.0)  # one more lag sample after the last answer
            loaded = smp.finish()
            stop.set()
            scrapes = await scr
        m_end = await scrape(s, base)
    lag_loaded = max((x.get("gatehouse_event_loop_lag_seconds", 0.0) for _, x in scrapes), default=float("nan"))
    return {
        "warmup": warmup, "alone": solo,
        "idle": lat_summary(idle), "loaded": lat_summary(loaded), "load_seconds": load_s,
        "lag_idle_s": m_idle.get("gatehouse_event_loop_lag_seconds"), "lag_loaded_max_s": lag_loaded,
        "shed": m_end.get("gatehouse_guardrail_shed_total", 0.0) - m_idle.get("gatehouse_guardrail_shed_total", 0.0),
        "fail_open": m_end.get("gatehouse_guardrail_fail_open_total", 0.0) - m_idle.get("gatehouse_guardrail_fail_open_total", 0.0),
        "fail_open_total": m_end.get("gatehouse_guardrail_fail_open_total", 0.0),
        "scrapes": len(scrapes),
        "slowest_healthz": sorted(loaded, key=lambda x: -x[1])[:5],
        "attacks": [attack_row(a) for a in todo],
    }


def fmt(x: float | None, nd: int = 1) -> str:
    return "–" if x is None or x != x else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> str:
    i, lo = r["idle"], r["loaded"]
    ratio = lambda k: lo[k] / i[k] if i[k] else float("nan")  # noqa: E731
    L = [
        "| `/healthz` | samples | p50 ms | p99 ms | max ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
        f"| idle | {i['n']} | {fmt(i['p50_ms'], 2)} | {fmt(i['p99_ms'], 2)} | {fmt(i['max_ms'], 2)} | {i['failed']} |",
        f"| under every adversarial input ({fmt(r['load_seconds'], 0)} s) | {lo['n']} | {fmt(lo['p50_ms'], 2)} | {fmt(lo['p99_ms'], 2)} | "
        f"{fmt(lo['max_ms'], 2)} | {lo['failed']} |",
        f"| **loaded / idle** | | **{fmt(ratio('p50_ms'), 2)}×** | **{fmt(ratio('p99_ms'), 2)}×** | **{fmt(ratio('max_ms'), 2)}×** | |",
        "",
        f"`gatehouse_event_loop_lag_seconds`: idle **{fmt((r['lag_idle_s'] or 0) * 1000)} ms**, worst scraped under load "
        f"**{fmt(r['lag_loaded_max_s'] * 1000)} ms** ({r['scrapes']} scrapes, 1 s apart). "
        f"Guardrail sheds: {r['shed']:.0f}; fail-open events: **{r['fail_open']:.0f}** under load, "
        f"{r['fail_open_total']:.0f} in the whole run (`gatehouse_guardrail_fail_open_total`).",
        "",
        "| input | what | requests | answers (status code) | slowest answer s |",
        "|---|---|---:|---|---:|",
    ]
    for a in r["attacks"]:
        answers = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in sorted(a["statuses"].items()))
        L.append(f"| {a['name']} | {a['what']} | {a['requests']} | {answers} | {fmt(a['max_s'], 2)} |")
    if r["alone"]:
        L += ["", "Each input alone (nothing else in flight), `/healthz` sampled around it:", "",
              "| input | answers | took s | `/healthz` max ms | p99 ms |", "|---|---|---:|---:|---:|"]
        for a in r["warmup"] + r["alone"]:
            answers = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in sorted(a["statuses"].items()))
            L.append(f"| {a['name']} | {answers} | {fmt(a['took_s'], 2)} | {fmt(a['healthz']['max_ms'], 1)} | {fmt(a['healthz']['p99_ms'], 1)} |")
    s = r["serialisation"]
    L += ["", "Serialising one whole reply (in this process, median / max of 15, a fresh string each time):", "",
          "| door | reply | bytes | median ms | max ms |", "|---|---|---:|---:|---:|"]
    for k, v in s.items():
        door, lang = k.split("/")
        L.append(f"| {door} | {lang} | {v['bytes']:,} | {fmt(v['median_ms'], 2)} | {fmt(v['max_ms'], 2)} |")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle-seconds", type=float, default=35.0, help="idle sampling (default 35; > 30 s lag window)")
    ap.add_argument("--interval-ms", type=float, default=50.0, help="/healthz sampling interval (default 50)")
    ap.add_argument("--reply-chars", type=int, default=1_000_000, help="size of the large whole reply (default 1,000,000)")
    ap.add_argument("--skip-alone", action="store_true", help="skip the phase that sends each input alone")
    ap.add_argument("--out", help="write JSON results here")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-adv-"))
    procs = Procs(workdir)
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    for k in ("GATEHOUSE_CONFIG", "GATEHOUSE_DEMO_RECITATION", "GATEHOUSE_DEMO_POLICIES"):
        os.environ.pop(k, None)
    try:
        port = free_port()
        gw = procs.start("gatehouse-demo", [sys.executable, "-m", "gateway", "serve", "--demo", "--port", str(port),
                                            "--log-level", "warning"], env, cwd=workdir)
        base = f"http://127.0.0.1:{port}"
        wait_http(gw, base + "/healthz", 180)
        load0 = os.getloadavg()
        res = run_loop(bench(base, port, args))
        res["serialisation"] = serialisation(args.reply_chars)
        res["gateway_alive"] = gw.popen.poll() is None
        table = markdown(res)
        print()
        print(table)
        print(f"\nload average before / after: {' '.join(f'{x:.2f}' for x in load0)} / "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
        bad = [(a["name"], k) for a in res["attacks"] for k in a["statuses"]
               if (k.startswith("5") and "overloaded" not in k) or (a["name"] == "harmful-probe" and k.startswith("200"))]
        if bad:
            print(f"\nFAILED: {bad}")
        warn = [ln for ln in gw.tail(400).splitlines() if "ERROR" in ln or "Traceback" in ln]
        if warn:
            print(f"\ngateway log: {len(warn)} errors; last: {warn[-1][:300]}")
        if args.out:
            doc = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                               "loadavg_before": load0, "loadavg_after": os.getloadavg()},
                   "params": vars(args), "result": res, "markdown": table}
            Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
            print(f"wrote {args.out}")
        return 1 if bad or not res["gateway_alive"] else 0
    finally:
        procs.stop_all()
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

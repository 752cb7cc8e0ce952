"""Guardrails benchmark: what input + output guardrails add to a Gatehouse request.

A script, not a test (extends ``bench_gateway.py`` and reuses its process helpers).
One run starts, each as its own process on loopback:

1. a mock OpenAI upstream (raw ASGI on uvicorn) whose reply is ~60 benign words,
   *varied per request* (sentences picked by a hash of the user message), so the
   embedder's exact-text LRU cache can't serve the output checks; JSON or SSE
   (one event per word);
2. gateway ``off``: ``python -m gateway serve``, one ``openai`` route to the mock,
   no policies, ``safety: {backend: none}``;
3. gateway ``on``: the same plus the **full check set** of issue #12: the default
   ``categories`` scorer on input (every harm category, jailbreak and prompt
   injection, legacy toxicity; language detection with ``unscored_language: flag``)
   and on tool results (injection), input PII (redact), output categories (reply text
   and tool-call arguments) + recitation (block), hold-back 160/160 chars; a
   recitation index built into the temp dir from ``gateway/demo_corpus/`` with
   ``python -m gateway recitation build``;
4. gateway ``legacy`` (skip with ``--no-legacy``): the check set before #12, the
   toxicity-only ``minilm-head`` with the same PII and recitation checks, so the
   full set's cost is compared with today's in the same run.

Then, round by round (order alternating, so drift on a shared machine hits both):

- c=1 non-streaming: requests alternate off/on one by one (paired); added = on − off
  per percentile, per round;
- c=1 streaming: the same, measuring TTFT (first non-empty content delta) and total
  stream time; added TTFT = what the hold-back window costs;
- c=16 non-streaming throughput, off, on and legacy, with each gateway process's CPU
  time per request; printed as **ratios to guardrails-off** measured in the same round
  (CPU per request on/off, throughput on/off; and legacy/off, on/legacy);
  ``/metrics`` of ``on`` is scraped before and after to get the mean
  ``gatehouse_guardrail_batch_size`` (micro-batching) and
  ``gatehouse_guardrail_latency_seconds`` per check in that phase.

Then **overload** (issue #17; ``--skip-overload`` skips it, ``--overload-only`` runs only it):
16 clients each send 4 chats of 100 distinct messages (1,600 texts against
``limits.guardrail_capacity`` 256) while 4 more clients repeat the README's harmful request
until the load ends, first against ``on`` (this benchmark's policy, ``on_error: open``), then
against a gateway ``demo`` running ``policies/examples/demo.yaml`` (``on_error: closed``).
Reported per gateway: every answer, the shed rate (429/503 with ``Retry-After``), sheds by
admission control (``gatehouse_guardrail_shed_total``), **fail-open events**
(``gatehouse_guardrail_fail_open_total`` over the phase: texts an ``on_error: open`` check let
through unchecked) and harmful probes answered 200. The exit status is 1 if the demo policy
has any fail-open event or passes a probe.

Every user message is distinct (a counter and varied wording), so no embedding is
reused across requests. Medians across rounds. Prints a markdown table with the
targets and pass/fail; writes JSON with ``--out``.

    /tmp/gh-venv/bin/python tests/bench/bench_guardrails.py --quick
    /tmp/gh-venv/bin/python tests/bench/bench_guardrails.py --out guardrails.json
    /tmp/gh-venv/bin/python tests/bench/bench_guardrails.py --overload-only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gateway import (  # noqa: E402  (reuse the core benchmark's process helpers)
    GATEWAY_KEY,
    ROOT,
    Procs,
    cpu_seconds,
    free_port,
    med,
    pct,
    read_request,
    run_loop,
    wait_http,
)

MODEL = "bench"
TARGETS = {"added_p50_ms": 25.0, "rps_c16": 60.0, "added_ttft_p50_ms": 30.0}
HOLDBACK_CHARS = 160
CONTEXT_CHARS = 160

# ---- the mock upstream: ~60-word benign reply, varied per request ---------------------------------

SENTENCES = [
    "Here is a short overview of the topic you asked about today.",
    "The main idea is to split the work into small steps you can check.",
    "Start by writing down what you already know and what you still need.",
    "A simple checklist helps keep track of progress over the coming week.",
    "Most people find it easier to begin with the smallest useful piece.",
    "You can measure the result afterwards and adjust the plan if needed.",
    "Good documentation makes it much easier for others to help you later.",
    "Make small changes so each one is easy to review.",
    "Ask a colleague to review the plan before you commit to a schedule.",
    "Regular short breaks tend to improve focus during longer work sessions.",
    "Keep notes of the decisions you made and the reasons behind them.",
    "If something is unclear, a quick experiment usually answers the question.",
    "Sharing early drafts invites feedback while changes are still cheap.",
    "Automating the repetitive parts saves time and reduces simple errors.",
    "Remember that a working draft is better than a perfect plan on paper.",
    "The library has several friendly guides that cover the basics well.",
]


def reply_for(user: str) -> str:
    h = hashlib.blake2b(user.encode(), digest_size=8).digest()
    order = sorted(range(len(SENTENCES)), key=lambda i: (h[i % 8] * 31 + i * h[(i + 3) % 8]) % 251)
    picks = order[:5]
    n = int.from_bytes(h[:2], "big")
    return f"Thanks for question {n}. " + " ".join(SENTENCES[i] for i in picks)  # ~62 words, ~370 chars


def _upstream_app() -> Any:
    import orjson

    created = 1_700_000_000
    json_headers = [(b"content-type", b"application/json")]
    sse_headers = [(b"content-type", b"text/event-stream")]

    def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": model,
                                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_request(scope, receive, send)
        if body is None:
            return
        req = orjson.loads(body)
        model = str(req.get("model"))
        user = next((m.get("content") for m in reversed(req.get("messages") or []) if m.get("role") == "user"), "") or ""
        reply = reply_for(str(user))
        words = reply.split(" ")
        if not req.get("stream"):
            out = orjson.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": len(words), "total_tokens": 30 + len(words)},
            })
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": out})
            return
        delay = float(os.environ.get("BENCH_TOKEN_DELAY_MS", "0")) / 1000
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        await send({"type": "http.response.body", "body": chunk(model, {"role": "assistant", "content": ""}), "more_body": True})
        for i, w in enumerate(words):
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk(model, {"content": w if i == 0 else " " + w}), "more_body": True})
        await send({"type": "http.response.body", "body": chunk(model, {}, "stop") + b"data: [DONE]\n\n", "more_body": False})

    return app


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(_upstream_app(), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="on")


# ---- configs --------------------------------------------------------------------------------------

HARMS = {"violence": 0.5, "crime": 0.5, "self_harm": 0.5, "sexual": 0.5, "sexual_minors": 0.3, "hate": 0.5,
         "threat": 0.5, "jailbreak": 0.5, "prompt_injection": 0.5, "toxicity": 0.8, "identity_attack": 0.7}
POLICY = {  # the full check set (issue #12)
    "id": "bench",
    "version": 2,
    "owner": "bench@example.com",
    "description": "Guardrails benchmark policy: every harm category, injection in tool results, PII, recitation.",
    "stream": {"holdback_chars": HOLDBACK_CHARS, "context_chars": CONTEXT_CHARS},
    "rules": [
        {"id": "block-harmful-input", "direction": "input", "action": "block",
         "checks": [{"type": "safety", "thresholds": HARMS, "unscored_language": "flag", "timeout_ms": 1500, "on_error": "open"}]},
        {"id": "injection-in-context", "direction": "input", "roles": ["tool", "grounding"], "action": "block",
         "checks": [{"type": "safety", "thresholds": {"prompt_injection": 0.5}, "timeout_ms": 1500, "on_error": "open"}]},
        {"id": "redact-pii-input", "direction": "input", "action": "redact",
         "checks": [{"type": "pii", "entities": ["email", "phone", "card"]}]},
        {"id": "output-safety", "direction": "output", "action": "block",
         "checks": [{"type": "safety", "thresholds": {k: v for k, v in HARMS.items() if k not in ("jailbreak", "prompt_injection")},
                     "unscored_language": "flag", "timeout_ms": 1500, "on_error": "open"},
                    {"type": "recitation", "threshold": 0.6, "timeout_ms": 1000, "on_error": "open"}]},
    ],
}
POLICY_LEGACY = {  # the check set before issue #12: toxicity-only minilm-head
    "id": "bench",
    "version": 1,
    "owner": "bench@example.com",
    "description": "Guardrails benchmark policy.",
    "stream": {"holdback_chars": HOLDBACK_CHARS, "context_chars": CONTEXT_CHARS},
    "rules": [
        {"id": "block-toxic-input", "direction": "input", "action": "block",
         "checks": [{"type": "safety", "thresholds": {"toxicity": 0.8, "identity_attack": 0.7}, "timeout_ms": 1500, "on_error": "open"}]},
        {"id": "redact-pii-input", "direction": "input", "action": "redact",
         "checks": [{"type": "pii", "entities": ["email", "phone", "card"]}]},
        {"id": "output-safety", "direction": "output", "action": "block",
         "checks": [{"type": "safety", "thresholds": {"toxicity": 0.8, "identity_attack": 0.7}, "timeout_ms": 1500, "on_error": "open"},
                    {"type": "recitation", "threshold": 0.6, "timeout_ms": 1000, "on_error": "open"}]},
    ],
}


BACKENDS = {"on": "categories", "legacy": "minilm-head", "demo": "categories"}
DEMO_POLICY = ROOT / "policies" / "examples" / "demo.yaml"
HARMFUL = "I hate all immigrants, they are vermin"  # the README's blocked example


def gateway_config(workdir: Path, name: str, upstream: str, guarded: bool, recitation_index: Path | None,
                   capacity: int | None = None) -> Path:
    import yaml

    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "workers": 1},
        "auth": {"keys": [{"id": "bench", "tenant": "bench", "key": GATEWAY_KEY}], "public_metrics": True},
        "routes": [{"name": MODEL, "targets": [{"name": "mock-upstream", "provider": "openai", "base_url": upstream + "/v1",
                                                  "model": MODEL, "api_key": "sk-upstream"}]}],
        "traffic_log": {"sink": "jsonl", "path": str(workdir / f"traffic-{name}.jsonl")},
    }
    if capacity is not None:
        cfg["limits"] = {"guardrail_capacity": capacity}
    if guarded:
        if name == "demo":  # the demo gateway's own policy file (on_error: closed on its model checks)
            policy = DEMO_POLICY
        else:
            policy = workdir / f"policy-bench-{name}.yaml"
            policy.write_text(yaml.safe_dump(POLICY if name == "on" else POLICY_LEGACY, sort_keys=False))
        cfg["policies"] = {"paths": [str(policy)], "reload": False}
        cfg["safety"] = {"backend": BACKENDS[name]}
        cfg["recitation"] = {"index": str(recitation_index)}
    else:
        cfg["safety"] = {"backend": "none"}
    path = workdir / f"gatehouse-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- requests -------------------------------------------------------------------------------------

TOPICS = ["sourdough bread", "a vegetable garden", "unit testing", "learning the guitar", "a family budget", "marathon training",
          "home composting", "a book club", "bird watching", "spreadsheet formulas", "a job interview", "photography basics",
          "houseplant care", "a road trip", "public speaking", "a small website", "chess openings", "learning Spanish"]
ASKS = ["Can you give me a few practical tips about {t}?", "How should a beginner get started with {t}?",
        "What should I watch out for when trying {t} for the first time?",
        "Please outline a simple weekly plan for {t}.", "Could you explain the basics of {t} in plain words?",
        "I am curious about {t}; what should I read first?"]
TAILS = ["Thanks a lot!", "Keep it short please.", "I have about an hour each evening.", "My friend recommended asking you.",
         "You can reach me at reader{n}@example.com with more ideas.", "This is for a school project."]

_counter = itertools.count()


def user_message() -> str:
    n = next(_counter)
    t = TOPICS[n % len(TOPICS)]
    a = ASKS[(n // len(TOPICS)) % len(ASKS)]
    tail = TAILS[(n * 7) % len(TAILS)]
    return f"{a.format(t=t)} {tail.format(n=n)} (request {n})"  # unique text: no embedder cache hits


def request_body(stream: bool) -> bytes:
    import orjson

    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                                         {"role": "user", "content": user_message()}],
                            "max_tokens": 128, "temperature": 0.2}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


CONTENT_RE = re.compile(rb'"content":\s*"[^"]')


class Stats:
    def __init__(self) -> None:
        self.total: list[float] = []
        self.ttft: list[float] = []
        self.errors = 0
        self.first_error: str | None = None

    def fail(self, msg: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = msg


async def one(session: Any, base: str, stream: bool, st: Stats) -> None:
    clock = time.perf_counter
    body = request_body(stream)
    headers = {"content-type": "application/json", "authorization": f"Bearer {GATEWAY_KEY}"}
    t0 = clock()
    try:
        async with session.post(base + "/v1/chat/completions", data=body, headers=headers) as resp:
            if stream:
                first = None
                buf = b""
                async for data in resp.content.iter_any():
                    buf += data
                    if first is None and CONTENT_RE.search(buf[-(len(data) + 32):]):
                        first = clock()
                ok = resp.status == 200 and b"[DONE]" in buf[-64:] and b"content_filter" not in buf
                if not ok:
                    st.fail(f"HTTP {resp.status}: ...{buf[-300:]!r}")
                    return
                if first is not None:
                    st.ttft.append((first - t0) * 1000)
            else:
                data = await resp.read()
                ok = resp.status == 200 and b'"finish_reason":"stop"' in data.replace(b" ", b"") and b"Thanks for question" in data
                if not ok:
                    st.fail(f"HTTP {resp.status}: {data[:300]!r}")
                    return
    except Exception as exc:
        st.fail(f"{type(exc).__name__}: {exc}")
        return
    st.total.append((clock() - t0) * 1000)


async def paired_c1(session: Any, bases: dict[str, str], order: list[str], stream: bool, n: int) -> dict[str, Stats]:
    """Concurrency 1; the targets take turns request by request (paired under the same noise)."""
    out = {k: Stats() for k in bases}
    for i in range(n):
        for name in (order if i % 2 == 0 else order[::-1]):
            await one(session, bases[name], stream, out[name])
    return out


async def phase_conc(session: Any, base: str, stream: bool, n: int, conc: int) -> tuple[Stats, float]:
    st = Stats()
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await one(session, base, stream, st)

    w0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return st, time.perf_counter() - w0


# ---- /metrics -------------------------------------------------------------------------------------

SAMPLE_RE = re.compile(r'^(gatehouse_[a-z_]+?)(?:\{([^}]*)\})?\s+([0-9.eE+\-]+|NaN|\+Inf)$')


async def scrape(session: Any, base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = SAMPLE_RE.match(line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def hist_delta(before: dict, after: dict, name: str, match: dict[str, str] | None = None) -> dict[str, Any]:
    """count/sum/bucket deltas of a histogram between two scrapes (labels filtered by ``match``)."""
    match = match or {}
    count = total = 0.0
    buckets: dict[float, float] = {}
    for (n, labels), v in after.items():
        d = dict(labels)
        if any(d.get(k) != val for k, val in match.items()):
            continue
        dv = v - before.get((n, labels), 0.0)
        if n == name + "_count":
            count += dv
        elif n == name + "_sum":
            total += dv
        elif n == name + "_bucket":
            le = float(d["le"])
            buckets[le] = buckets.get(le, 0.0) + dv
    return {"count": count, "sum": total, "mean": (total / count) if count else None, "buckets": dict(sorted(buckets.items()))}


def hist_quantile(h: dict[str, Any], q: float) -> float | None:
    """Prometheus-style linear interpolation inside the bucket holding the q-quantile."""
    if not h["count"]:
        return None
    rank = q * h["count"]
    prev_le, prev_c = 0.0, 0.0
    for le, c in h["buckets"].items():
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return None


CHECKS = ("safety", "pii", "recitation")


def guard_metrics(before: dict, after: dict) -> dict[str, Any]:
    batch = hist_delta(before, after, "gatehouse_guardrail_batch_size")
    checks = {}
    for c in CHECKS:
        h = hist_delta(before, after, "gatehouse_guardrail_latency_seconds", {"check": c})
        checks[c] = {"count": h["count"], "mean_ms": h["mean"] * 1000 if h["mean"] is not None else None,
                     "p50_ms": (hist_quantile(h, 0.5) or 0) * 1000 if h["count"] else None,
                     "p99_ms": (hist_quantile(h, 0.99) or 0) * 1000 if h["count"] else None}
    hold = hist_delta(before, after, "gatehouse_stream_holdback_seconds")
    return {"batch_mean": batch["mean"], "batches": batch["count"], "checks": checks,
            "holdback_mean_ms": hold["mean"] * 1000 if hold["mean"] is not None else None}


# ---- overload: more texts in flight than the guardrails' capacity ----------------------------------

def overload_body(n_messages: int) -> bytes:
    import orjson

    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": user_message()} for _ in range(n_messages)],
                         "max_tokens": 128})


def metric_sum(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


async def overload(session: Any, base: str, args: argparse.Namespace) -> dict[str, Any]:
    """#17's scenario: ``--overload-clients`` clients each send ``--overload-requests`` chats of
    ``--overload-messages`` messages (every text distinct), while ``--overload-probes`` clients send
    the README's harmful request over and over until the load ends. Counts every answer, the 503s
    with ``Retry-After`` (sheds), and ``gatehouse_guardrail_fail_open_total`` over the phase."""
    import orjson

    headers = {"content-type": "application/json", "authorization": f"Bearer {GATEWAY_KEY}"}
    bodies = [[overload_body(args.overload_messages) for _ in range(args.overload_requests)] for _ in range(args.overload_clients)]
    probe = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": HARMFUL}], "max_tokens": 32})
    statuses: dict[str, dict[str, int]] = {"load": {}, "probe": {}}
    no_retry_after = 0
    done = asyncio.Event()

    async def send(kind: str, body: bytes) -> None:
        nonlocal no_retry_after
        try:
            async with session.post(base + "/v1/chat/completions", data=body, headers=headers) as r:
                data = await r.read()
                key = str(r.status)
                if r.status >= 400:
                    with contextlib.suppress(ValueError, AttributeError):
                        key += " " + str(orjson.loads(data)["error"].get("code"))
                if r.status in (429, 503) and "retry-after" not in r.headers:
                    no_retry_after += 1
        except Exception as exc:
            key = type(exc).__name__
        statuses[kind][key] = statuses[kind].get(key, 0) + 1

    async def client(mine: list[bytes]) -> None:
        for b in mine:
            await send("load", b)

    async def prober() -> None:
        while not done.is_set():
            await send("probe", probe)

    before = await scrape(session, base)
    t0 = time.perf_counter()
    probes = [asyncio.create_task(prober()) for _ in range(args.overload_probes)]
    await asyncio.gather(*(client(b) for b in bodies))
    done.set()
    await asyncio.gather(*probes)
    wall = time.perf_counter() - t0
    after = await scrape(session, base)
    n = sum(sum(v.values()) for v in statuses.values())
    shed = sum(c for kind in statuses.values() for k, c in kind.items() if k.split()[0] in ("429", "503"))
    return {
        "requests": n, "wall_s": wall, "statuses": statuses, "shed_responses": shed, "shed_rate": shed / n if n else None,
        "shed_without_retry_after": no_retry_after,
        "admission_shed": metric_sum(after, "gatehouse_guardrail_shed_total") - metric_sum(before, "gatehouse_guardrail_shed_total"),
        "fail_open": metric_sum(after, "gatehouse_guardrail_fail_open_total") - metric_sum(before, "gatehouse_guardrail_fail_open_total"),
        "probes_passed": statuses["probe"].get("200", 0),
    }


def overload_markdown(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    L = [f"Overload: {args.overload_clients} clients x {args.overload_requests} chats of {args.overload_messages} distinct messages "
         f"({args.overload_clients * args.overload_messages} texts at once against a capacity of "
         f"{args.overload_capacity or 256} texts), plus {args.overload_probes} clients repeating a harmful request until the load ends:",
         "",
         "| gateway | policy | requests | answers | shed (429/503 + Retry-After) | shed rate | sheds by admission | fail-open events | harmful probes passed |",
         "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    what = {"on": "bench policy, `on_error: open`", "demo": "`policies/examples/demo.yaml`, `on_error: closed`"}
    for name, r in res.items():
        answers = "; ".join(f"{kind}: " + ", ".join(f"{k} ×{v}" for k, v in sorted(st.items())) for kind, st in r["statuses"].items())
        L.append(f"| {name} | {what.get(name, name)} | {r['requests']} | {answers} | {r['shed_responses']} | "
                 f"{fmt((r['shed_rate'] or 0) * 100)}% | {r['admission_shed']:.0f} | **{r['fail_open']:.0f}** | **{r['probes_passed']}** |")
    return "\n".join(L)


async def overload_all(bases: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import aiohttp

    out: dict[str, dict[str, Any]] = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        for name in ("on", "demo"):
            if name not in bases:
                continue
            await phase_conc(s, bases[name], False, 16, 4)  # warm-up (models, paths); answers not judged
            out[name] = await overload(s, bases[name], args)
            r = out[name]
            print(f"  {name}: {r['requests']} requests in {r['wall_s']:.1f} s, shed {r['shed_responses']} "
                  f"({(r['shed_rate'] or 0) * 100:.0f}%), fail-open {r['fail_open']:.0f}, probes passed {r['probes_passed']}; "
                  f"{r['statuses']}", flush=True)
    return out


# ---- the benchmark --------------------------------------------------------------------------------

async def bench(bases: dict[str, str], pids: dict[str, int], args: argparse.Namespace) -> list[dict[str, Any]]:
    import aiohttp

    rounds: list[dict[str, Any]] = []
    conn = aiohttp.TCPConnector(limit=256, limit_per_host=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        for stream in (False, True):  # warm-up: connections, model, tokenizer, code paths
            for name, base in bases.items():
                st, _ = await phase_conc(s, base, stream, args.warmup, 4)
                if st.errors:
                    raise RuntimeError(f"{name} warm-up failed: {st.first_error}")
        st, _ = await phase_conc(s, bases["on"], False, args.warmup, args.concurrency)
        if st.errors:
            raise RuntimeError(f"on warm-up (c={args.concurrency}) failed: {st.first_error}")
        for rnd in range(args.rounds):
            order = ["off", "on"] if rnd % 2 == 0 else ["on", "off"]
            r: dict[str, Any] = {}
            m0 = await scrape(s, bases["on"])
            pair = {k: bases[k] for k in ("off", "on")}
            ns = await paired_c1(s, pair, order, False, args.latency_requests)
            m1 = await scrape(s, bases["on"])
            sm = await paired_c1(s, pair, order, True, args.stream_requests)
            m2 = await scrape(s, bases["on"])
            r["c1_metrics_on"] = guard_metrics(m0, m1)
            r["stream_metrics_on"] = guard_metrics(m1, m2)
            for name in order:
                r[name] = {
                    "c1": {"p50_ms": pct(ns[name].total, 50), "p99_ms": pct(ns[name].total, 99), "n": len(ns[name].total),
                           "errors": ns[name].errors, "first_error": ns[name].first_error},
                    "stream": {"ttft_p50_ms": pct(sm[name].ttft, 50), "ttft_p99_ms": pct(sm[name].ttft, 99),
                               "total_p50_ms": pct(sm[name].total, 50), "total_p99_ms": pct(sm[name].total, 99),
                               "n": len(sm[name].total), "errors": sm[name].errors, "first_error": sm[name].first_error},
                }
            for name in [*order, *(["legacy"] if "legacy" in bases else [])]:
                r.setdefault(name, {})
                mb = await scrape(s, bases["on"]) if name == "on" else None
                c0 = cpu_seconds(pids[name])
                st, wall = await phase_conc(s, bases[name], False, args.requests, args.concurrency)
                cpu = cpu_seconds(pids[name]) - c0
                r[name]["c16"] = {"n": len(st.total), "errors": st.errors, "first_error": st.first_error, "rps": len(st.total) / wall,
                                  "p50_ms": pct(st.total, 50), "p99_ms": pct(st.total, 99), "cpu_ms_per_req": cpu * 1000 / max(1, args.requests)}
                if mb is not None:
                    r["c16_metrics_on"] = guard_metrics(mb, await scrape(s, bases["on"]))
            on, off = r["on"], r["off"]
            legacy = f" legacy {r['legacy']['c16']['rps']:.0f}" if "legacy" in r else ""
            print(f"  round {rnd + 1}: c1 p50 off {off['c1']['p50_ms']:.1f} on {on['c1']['p50_ms']:.1f} ms | "
                  f"ttft p50 off {off['stream']['ttft_p50_ms']:.1f} on {on['stream']['ttft_p50_ms']:.1f} ms | "
                  f"c{args.concurrency} off {off['c16']['rps']:.0f} on {on['c16']['rps']:.0f}"
                  f"{legacy} req/s | "
                  f"cpu/req on/off {on['c16']['cpu_ms_per_req'] / off['c16']['cpu_ms_per_req']:.2f} | "
                  f"batch mean {r['c16_metrics_on']['batch_mean'] or float('nan'):.2f} | "
                  f"errors {sum(x[p]['errors'] for x in (on, off) for p in ('c1', 'stream', 'c16'))}", flush=True)
            rounds.append(r)
    return rounds


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def m(f: Any) -> float | None:
        return med([f(r) for r in rounds])

    s: dict[str, Any] = {}
    for name in ("off", "on"):
        s[name] = {
            "c1_p50_ms": m(lambda r, n=name: r[n]["c1"]["p50_ms"]), "c1_p99_ms": m(lambda r, n=name: r[n]["c1"]["p99_ms"]),
            "ttft_p50_ms": m(lambda r, n=name: r[n]["stream"]["ttft_p50_ms"]),
            "ttft_p99_ms": m(lambda r, n=name: r[n]["stream"]["ttft_p99_ms"]),
            "stream_total_p50_ms": m(lambda r, n=name: r[n]["stream"]["total_p50_ms"]),
            "stream_total_p99_ms": m(lambda r, n=name: r[n]["stream"]["total_p99_ms"]),
            "rps_c16": m(lambda r, n=name: r[n]["c16"]["rps"]), "c16_p50_ms": m(lambda r, n=name: r[n]["c16"]["p50_ms"]),
            "c16_p99_ms": m(lambda r, n=name: r[n]["c16"]["p99_ms"]),
            "cpu_ms_per_req_c16": m(lambda r, n=name: r[n]["c16"]["cpu_ms_per_req"]),
            "errors": sum(r[name][p]["errors"] for r in rounds for p in ("c1", "stream", "c16")),
            "first_error": next((r[name][p]["first_error"] for r in rounds for p in ("c1", "stream", "c16") if r[name][p]["first_error"]), None),
        }
    d = lambda k: m(lambda r: r["on"][k[0]][k[1]] - r["off"][k[0]][k[1]])  # noqa: E731  per round, then median
    s["added"] = {"c1_p50_ms": d(("c1", "p50_ms")), "c1_p99_ms": d(("c1", "p99_ms")),
                  "ttft_p50_ms": d(("stream", "ttft_p50_ms")), "ttft_p99_ms": d(("stream", "ttft_p99_ms")),
                  "stream_total_p50_ms": d(("stream", "total_p50_ms")), "stream_total_p99_ms": d(("stream", "total_p99_ms"))}
    gm: dict[str, Any] = {}
    for phase in ("c1_metrics_on", "stream_metrics_on", "c16_metrics_on"):
        gm[phase] = {"batch_mean": m(lambda r, p=phase: r[p]["batch_mean"]), "batches": m(lambda r, p=phase: r[p]["batches"]),
                     "holdback_mean_ms": m(lambda r, p=phase: r[p]["holdback_mean_ms"]),
                     "checks": {c: {k: m(lambda r, p=phase, c=c, k=k: r[p]["checks"][c][k]) for k in ("mean_ms", "p50_ms", "p99_ms", "count")}
                                for c in CHECKS}}
    s["metrics"] = gm
    # ratios to guardrails-off, per round (same machine state), then the median
    def ratio(a: str, b: str, key: str) -> float | None:
        return m(lambda r: r[a]["c16"][key] / r[b]["c16"][key] if a in r and b in r and r[b]["c16"][key] else None)

    s["ratios"] = {"cpu_on_over_off": ratio("on", "off", "cpu_ms_per_req"), "rps_on_over_off": ratio("on", "off", "rps")}
    if all("legacy" in r for r in rounds):
        s["legacy"] = {"rps_c16": m(lambda r: r["legacy"]["c16"]["rps"]),
                       "cpu_ms_per_req_c16": m(lambda r: r["legacy"]["c16"]["cpu_ms_per_req"]),
                       "errors": sum(r["legacy"]["c16"]["errors"] for r in rounds),
                       "first_error": next((r["legacy"]["c16"]["first_error"] for r in rounds if r["legacy"]["c16"]["first_error"]), None)}
        s["ratios"].update({"cpu_legacy_over_off": ratio("legacy", "off", "cpu_ms_per_req"),
                            "rps_legacy_over_off": ratio("legacy", "off", "rps"),
                            "cpu_on_over_legacy": ratio("on", "legacy", "cpu_ms_per_req")})
    s["pass"] = {
        "added_p50_ms": s["added"]["c1_p50_ms"] is not None and s["added"]["c1_p50_ms"] <= TARGETS["added_p50_ms"],
        "rps_c16": s["on"]["rps_c16"] is not None and s["on"]["rps_c16"] >= TARGETS["rps_c16"],
        "added_ttft_p50_ms": s["added"]["ttft_p50_ms"] is not None and s["added"]["ttft_p50_ms"] <= TARGETS["added_ttft_p50_ms"],
    }
    return s


def fmt(x: float | None, nd: int = 1) -> str:
    return "–" if x is None or x != x else f"{x:.{nd}f}"


def markdown(s: dict[str, Any], args: argparse.Namespace) -> str:
    c = args.concurrency
    ok = lambda k: "**pass**" if s["pass"][k] else "**FAIL**"  # noqa: E731
    on, off, add = s["on"], s["off"], s["added"]
    L = [
        "| metric | guardrails off | guardrails on | added (on − off) | target | result |",
        "|---|---:|---:|---:|---:|---|",
        f"| non-streaming latency p50, c=1 (ms) | {fmt(off['c1_p50_ms'])} | {fmt(on['c1_p50_ms'])} | {fmt(add['c1_p50_ms'])} | "
        f"added ≤ {TARGETS['added_p50_ms']:.0f} | {ok('added_p50_ms')} |",
        f"| non-streaming latency p99, c=1 (ms) | {fmt(off['c1_p99_ms'])} | {fmt(on['c1_p99_ms'])} | {fmt(add['c1_p99_ms'])} | – | |",
        f"| throughput, c={c}, non-streaming (req/s) | {fmt(off['rps_c16'], 0)} | {fmt(on['rps_c16'], 0)} | – | "
        f"on ≥ {TARGETS['rps_c16']:.0f} | {ok('rps_c16')} |",
        f"| latency p50 / p99 at c={c} (ms) | {fmt(off['c16_p50_ms'])} / {fmt(off['c16_p99_ms'])} | "
        f"{fmt(on['c16_p50_ms'])} / {fmt(on['c16_p99_ms'])} | – | – | |",
        f"| gateway CPU per request at c={c} (ms) | {fmt(off['cpu_ms_per_req_c16'], 2)} | {fmt(on['cpu_ms_per_req_c16'], 2)} | "
        f"{fmt((on['cpu_ms_per_req_c16'] or 0) - (off['cpu_ms_per_req_c16'] or 0), 2)} | – | |",
        f"| streaming TTFT p50, c=1 (ms) | {fmt(off['ttft_p50_ms'])} | {fmt(on['ttft_p50_ms'])} | {fmt(add['ttft_p50_ms'])} | "
        f"added ≤ {TARGETS['added_ttft_p50_ms']:.0f} | {ok('added_ttft_p50_ms')} |",
        f"| streaming TTFT p99, c=1 (ms) | {fmt(off['ttft_p99_ms'])} | {fmt(on['ttft_p99_ms'])} | {fmt(add['ttft_p99_ms'])} | – | |",
        f"| streaming total p50 / p99, c=1 (ms) | {fmt(off['stream_total_p50_ms'])} / {fmt(off['stream_total_p99_ms'])} | "
        f"{fmt(on['stream_total_p50_ms'])} / {fmt(on['stream_total_p99_ms'])} | "
        f"{fmt(add['stream_total_p50_ms'])} / {fmt(add['stream_total_p99_ms'])} | – | |",
        "",
        "From the `on` gateway's `/metrics` (deltas per phase, median over rounds):",
        "",
        "| phase | safety batch size, mean (batches) | safety check ms mean / p50 / p99 | PII check ms mean | recitation check ms mean / p50 | hold-back per chunk, mean ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rt = s["ratios"]
    L_ratio = [
        "",
        f"Ratios to guardrails-off in the same run (c={c}, non-streaming; per round, median):",
        "",
        "| check set | gateway CPU per request (ms) | CPU / off | throughput (req/s) | throughput / off |",
        "|---|---:|---:|---:|---:|",
        f"| off | {fmt(off['cpu_ms_per_req_c16'], 2)} | 1.00 | {fmt(off['rps_c16'], 0)} | 1.00 |",
    ]
    if "legacy" in s:
        lg = s["legacy"]
        L_ratio.append(f"| before #12: toxicity-only `minilm-head` + PII + recitation | {fmt(lg['cpu_ms_per_req_c16'], 2)} | "
                       f"{fmt(rt['cpu_legacy_over_off'], 2)} | {fmt(lg['rps_c16'], 0)} | {fmt(rt['rps_legacy_over_off'], 2)} |")
    L_ratio.append(f"| after #12: full check set (`{BACKENDS['on']}`, all harm categories, languages, tool results, tool calls) + PII + recitation | "
                   f"{fmt(on['cpu_ms_per_req_c16'], 2)} | {fmt(rt['cpu_on_over_off'], 2)} | {fmt(on['rps_c16'], 0)} | {fmt(rt['rps_on_over_off'], 2)} |")
    if "legacy" in s:
        L_ratio.append("")
        L_ratio.append(f"Full check set CPU per request / toxicity-only: **{fmt(rt['cpu_on_over_legacy'], 2)}**.")
    names = {"c1_metrics_on": "c=1 non-streaming", "stream_metrics_on": "c=1 streaming", "c16_metrics_on": f"c={c} non-streaming"}
    for k, label in names.items():
        g = s["metrics"][k]
        sc, pc, rc = g["checks"]["safety"], g["checks"]["pii"], g["checks"]["recitation"]
        L.append(f"| {label} | {fmt(g['batch_mean'], 2)} ({fmt(g['batches'], 0)}) | {fmt(sc['mean_ms'])} / {fmt(sc['p50_ms'])} / {fmt(sc['p99_ms'])} | "
                 f"{fmt(pc['mean_ms'], 2)} | {fmt(rc['mean_ms'])} / {fmt(rc['p50_ms'])} | {fmt(g['holdback_mean_ms'])} |")
    L.append("")
    L.append(f"Rounds: {args.rounds}; per round c=1: {args.latency_requests} non-streaming + {args.stream_requests} streaming requests per "
             f"gateway (alternating off/on), c={c}: {args.requests} per gateway. Reply ~62 words (~370 chars, varied per request), "
             f"streamed one word per SSE event{'' if not args.token_delay_ms else f' every {args.token_delay_ms} ms'}; "
             f"hold-back {HOLDBACK_CHARS}/{CONTEXT_CHARS} chars. Histogram p50/p99 are bucket-interpolated.")
    return "\n".join(L + L_ratio)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600, help="requests per gateway per c=16 phase (default 600)")
    ap.add_argument("--latency-requests", type=int, default=150, help="non-streaming c=1 requests per gateway per round")
    ap.add_argument("--stream-requests", type=int, default=100, help="streaming c=1 requests per gateway per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--token-delay-ms", type=float, default=0.0, help="upstream delay between streamed words (default 0)")
    ap.add_argument("--quick", action="store_true", help="small smoke run (~1 min)")
    ap.add_argument("--out", help="write JSON results here")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--no-legacy", action="store_true", help="skip the toxicity-only (before #12) gateway")
    ap.add_argument("--on-backend", default=BACKENDS["on"], help="safety.backend of the `on` gateway (default categories)")
    ap.add_argument("--skip-overload", action="store_true", help="skip the overload phase")
    ap.add_argument("--overload-only", action="store_true", help="only the overload phase (gateways `on` and `demo`)")
    ap.add_argument("--overload-clients", type=int, default=16)
    ap.add_argument("--overload-requests", type=int, default=4, help="requests per overload client")
    ap.add_argument("--overload-messages", type=int, default=100, help="messages per overload request")
    ap.add_argument("--overload-probes", type=int, default=4, help="clients repeating the harmful probe during the overload")
    ap.add_argument("--overload-capacity", type=int, default=None, help="limits.guardrail_capacity of the overloaded gateways (default 256)")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    BACKENDS["on"] = args.on_backend
    if args.quick:
        args.requests, args.latency_requests, args.stream_requests, args.rounds, args.warmup = 200, 40, 30, 2, 20

    workdir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-guard-"))
    procs = Procs(workdir)
    py = sys.executable
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    try:
        index = workdir / "recitation-index"
        subprocess.run([py, "-m", "gateway", "recitation", "build", str(ROOT / "gateway" / "demo_corpus"), "-o", str(index),
                        "--no-progress"], cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        up = procs.start("upstream", [py, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)],
                         {**env, "BENCH_TOKEN_DELAY_MS": str(args.token_delay_ms)})
        wait_http(up, upstream + "/healthz", 30)
        bases: dict[str, str] = {}
        pids: dict[str, int] = {}
        gws = {}
        names: list[tuple[str, bool]] = [("on", True)] if args.overload_only else [("off", False), ("on", True)]
        if not args.no_legacy and not args.overload_only:
            names.append(("legacy", True))
        if not args.skip_overload:
            names.append(("demo", True))
        for name, guarded in names:
            port = free_port()
            cfg = gateway_config(workdir, name, upstream, guarded, index, args.overload_capacity if name in ("on", "demo") else None)
            gws[name] = procs.start(f"gatehouse-{name}", [py, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port),
                                                         "--log-level", "warning"], env)
            bases[name] = f"http://127.0.0.1:{port}"
            pids[name] = gws[name].popen.pid
        for name, p in gws.items():
            wait_http(p, bases[name] + "/healthz", 120)
        t0 = time.time()
        rounds: list[dict[str, Any]] = []
        summary: dict[str, Any] = {}
        table = ""
        errs: dict[str, int] = {}
        if not args.overload_only:
            print(f"gateways up; rounds {args.rounds}; c=1 x {args.latency_requests} (+{args.stream_requests} streaming) per gateway, "
                  f"c={args.concurrency} x {args.requests}", flush=True)
            rounds = run_loop(bench({k: v for k, v in bases.items() if k != "demo"}, pids, args))
            summary = summarize(rounds)
            table = markdown(summary, args)
            print()
            print(table)
            errs = {n: summary[n]["errors"] for n in ("off", "on", "legacy") if n in summary}
            if any(errs.values()):
                print(f"\nERRORS: {errs}; first: off={summary['off']['first_error']!r} on={summary['on']['first_error']!r}")
        over: dict[str, dict[str, Any]] = {}
        if not args.skip_overload:
            print(f"overload phase: {args.overload_clients} clients x {args.overload_requests} x {args.overload_messages}-message chats "
                  f"+ {args.overload_probes} harmful-probe clients, against {', '.join(n for n in ('on', 'demo') if n in bases)}", flush=True)
            over = run_loop(overload_all(bases, args))
            otable = overload_markdown(over, args)
            table = f"{table}\n\n{otable}" if table else otable
            print()
            print(otable)
        warn = [ln for ln in gws["on"].tail(200).splitlines() if "WARNING" in ln or "ERROR" in ln]
        if warn:
            print(f"\n'on' gateway log has {len(warn)} warnings/errors, last: {warn[-1][:300]}")
        bench_s = time.time() - t0
        print(f"\nbenchmark phases took {bench_s:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
        if args.out:
            doc = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                            "loadavg_at_end": os.getloadavg()},
                "params": {k: v for k, v in vars(args).items() if k != "serve_upstream"},
                "targets": TARGETS, "policy": POLICY, "policy_legacy": POLICY_LEGACY, "summary": summary, "rounds": rounds,
                "overload": over, "bench_seconds": bench_s, "total_seconds": time.time() - started, "markdown": table,
            }
            Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
            print(f"wrote {args.out}")
        # under overload the demo policy must never pass a text unchecked nor a harmful probe; the bench
        # policy's `on_error: open` may, and the figures say how often: that is what `open` costs
        disarmed = [n for n, r in over.items() if n == "demo" and (r["probes_passed"] or r["fail_open"])]
        if disarmed:
            print(f"\nDISARMED under overload: {disarmed}")
        return 1 if any(errs.values()) or disarmed else 0
    finally:
        procs.stop_all()
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

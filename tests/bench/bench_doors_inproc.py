"""In-process CPU per request of each door, whole and streamed (no sockets, no upstream server).

The real app (``create_app``) is driven through ASGI; its httpx client gets an
``httpx.MockTransport`` that answers like an OpenAI-compatible upstream (a 16-word reply,
or the same reply as 18 SSE events with a usage chunk and ``[DONE]``). Guardrails and
traffic log off. For each door x mode: 200 warm-up requests, then N requests in 5 batches;
the figure is the best batch's ``time.process_time()`` per request (µs), so load from
other processes on the machine moves it less than wall time.

Run it on two checkouts, alternating, to compare (each from its own tree)::

    PYTHONPATH=$PWD nice -n 10 /work/main/.venv/bin/python tests/bench/bench_doors_inproc.py 2000
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import orjson

from gateway.app import create_app
from gateway.config import Settings

TEXT = "The quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches"
REPLY = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "bench",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}})


def _sse() -> bytes:
    def ev(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "bench", **obj}) + b"\n\n"

    out = ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for w in TEXT.split():
        out += ev({"choices": [{"index": 0, "delta": {"content": " " + w}, "finish_reason": None}]})
    out += ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out += ev({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}})
    return out + b"data: [DONE]\n\n"


SSE = _sse()


def upstream(request: httpx.Request) -> httpx.Response:
    if orjson.loads(request.content).get("stream"):
        return httpx.Response(200, stream=httpx.ByteStream(SSE), headers={"content-type": "text/event-stream"})
    return httpx.Response(200, stream=httpx.ByteStream(REPLY), headers={"content-type": "application/json"})


SETTINGS = {
    "auth": {"keys": [{"id": "bench", "tenant": "bench", "key": "sk-bench"}]},
    "routes": [{"name": "bench", "targets": [{"name": "up", "provider": "openai", "base_url": "http://up/v1", "model": "bench", "api_key": "k"}]}],
    "traffic_log": {"sink": "none"},
    "safety": {"backend": "none"},
}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}


def body(door: str, stream: bool) -> bytes:
    system, user = "You are a terse assistant.", "Say something about foxes, please."
    b: dict[str, Any]
    if door == "messages":
        b = {"model": "bench", "system": system, "messages": [{"role": "user", "content": user}], "max_tokens": 64, "temperature": 0.2}
    elif door == "responses":
        b = {"model": "bench", "instructions": system, "input": user, "max_output_tokens": 64, "temperature": 0.2}
    else:
        b = {"model": "bench", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
             "max_tokens": 64, "temperature": 0.2}
    if stream:
        b["stream"] = True
    return orjson.dumps(b)


async def main(n: int) -> dict[tuple[str, bool], float]:
    app = create_app(Settings.model_validate(SETTINGS), transport=httpx.MockTransport(upstream))
    life_q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()
    await life_q.put({"type": "lifespan.startup"})

    async def lsend(m: dict[str, Any]) -> None:
        if m["type"] == "lifespan.startup.complete":
            started.set()

    life = asyncio.ensure_future(app({"type": "lifespan"}, life_q.get, lsend))
    await started.wait()
    never = asyncio.Event()

    async def one(path: str, raw: bytes) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await never.wait()  # the client stays connected
            return {"type": "http.disconnect"}

        out: list[dict[str, Any]] = []

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
                 "headers": [(b"authorization", b"Bearer sk-bench"), (b"content-type", b"application/json")]}
        await app(scope, receive, send)
        assert out[0]["status"] == 200, out

    res: dict[tuple[str, bool], float] = {}
    for door in PATHS:
        for stream in (False, True):
            raw = body(door, stream)
            for _ in range(200):
                await one(PATHS[door], raw)
            best = float("inf")
            for _ in range(5):
                c0 = time.process_time()
                for _ in range(n // 5):
                    await one(PATHS[door], raw)
                best = min(best, (time.process_time() - c0) / (n // 5) * 1e6)
            res[(door, stream)] = best
    await life_q.put({"type": "lifespan.shutdown"})
    await life
    return res


if __name__ == "__main__":
    results = asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
    for (door, stream), us in results.items():
        print(f"{door:10s} {'stream' if stream else 'whole':6s} {us:7.1f} us/req (best of 5)")

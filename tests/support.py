"""Test harness: real servers on loopback, a fake upstream keyed by model name.

- ``serve_app(app)``: uvicorn on a free 127.0.0.1 port in a thread; stopped on exit.
- ``FakeUpstream``: an OpenAI-compatible HTTP server. Its behaviour is chosen by
  the upstream model name, so a fault test reads like prose: ``echo``,
  ``fixed:TEXT``, ``slow:MS``, ``error:503``, ``flaky:503:2`` (fails twice, then
  answers), ``stream-then-drop`` (the TCP connection breaks mid-stream) and
  ``hang-stream`` (one chunk, then nothing until the client leaves; the server
  records that it saw the disconnect).
  Guard models: ``guard`` answers like Llama Guard 3 (``safe`` / ``unsafe\nS9``)
  on chat and completions, ``guard-garbage`` answers prose, ``guard-slow:MS``
  answers after MS ms; ``POST /v1/moderations`` answers in OpenAI's shape. Both
  decide by the keywords in ``GUARD_KEYWORDS``.
  ``tool-call`` answers with one tool call whose ``arguments`` are the last user
  message (streamed: the arguments in 8-character fragments).
  ``POST /v1/messages`` is an Anthropic Messages upstream with the mock behaviours
  (``tool:NAME`` calls a tool).
- ``make_settings(...)``: gateway settings for a test, API key ``sk-test``.
- ``gateway(settings)``: a real gateway on a free port -> (base_url, app).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn

from gateway.app import Gatehouse, create_app
from gateway.config import Settings, parse_settings
from gateway.model import END
from gateway.protocols import anthropic as anthropic_proto
from gateway.protocols import chat as chat_proto
from gateway.providers import UpstreamFailure
from gateway.providers.mock import MockEngine

API_KEY = "sk-test"

# keyword -> (Llama Guard 3 code, OpenAI moderation category) for the fake guard models
GUARD_KEYWORDS: dict[str, tuple[str, str]] = {
    "pipe bomb": ("S9", "violence"),
    "build a bomb": ("S9", "violence"),
    "爆弾": ("S9", "violence"),
    "methamphetamine": ("S2", "illicit"),
    "hurt you": ("S1", "harassment/threatening"),
    "sex scene": ("S12", "sexual"),
    "defame": ("S5", "harassment"),
}
OPENAI_MODERATION = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
    "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence", "violence/graphic",
)


def guard_hits(text: str) -> list[tuple[str, str]]:
    low = text.lower()
    return [v for k, v in GUARD_KEYWORDS.items() if k in low]


def llama_guard_answer(text: str) -> str:
    hits = guard_hits(text)
    return "unsafe\n" + ",".join(dict.fromkeys(code for code, _ in hits)) if hits else "safe"


def moderation_result(text: str) -> dict[str, Any]:
    flagged = {cat for _, cat in guard_hits(text)}
    scores = {c: (0.93 if c in flagged else 0.01) for c in OPENAI_MODERATION}
    return {"flagged": bool(flagged), "categories": {c: c in flagged for c in OPENAI_MODERATION}, "category_scores": scores}


def _guarded_text(endpoint: str, req: dict[str, Any]) -> str:
    if endpoint == "completions":
        prompt = str(req.get("prompt", ""))
        start, end = prompt.find("<BEGIN CONVERSATION>"), prompt.find("<END CONVERSATION>")
        return prompt[start:end] if start >= 0 < end else prompt
    msgs = req.get("messages") or [{}]
    return str(msgs[-1].get("content", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn in a thread. Port 0 lets the kernel pick a free port at bind time, so
    parallel tests never race for one; the real port is read back once started."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or 0
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                loop="asyncio", http="h11", access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        # generous: the demo's startup builds indexes and loads models, on a CI box shared with other jobs
        deadline = time.monotonic() + 240
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start (see log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start within 240 s")
            time.sleep(0.01)
        if not self.port:
            self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextlib.contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[ServerThread]:
    srv = ServerThread(app, port).start()
    try:
        yield srv
    finally:
        srv.stop()


class FakeUpstream:
    """A raw-ASGI OpenAI-compatible server (so it can break connections on purpose)."""

    def __init__(self) -> None:
        self.engine = MockEngine()
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        if path == "/v1/moderations":
            req = orjson.loads(body)
            self.requests.append(req)
            self.calls["moderations"] += 1
            inputs = req.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            await self._json(send, 200, {"id": "modr-fake", "model": str(req.get("model")), "results": [moderation_result(t) for t in texts]})
            return
        if path == "/v1/messages":
            await self._messages(orjson.loads(body), send)
            return
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}.get(path)
        if endpoint is None:
            await self._json(send, 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})
            return
        req = orjson.loads(body)
        self.requests.append(req)
        model = str(req.get("model"))
        self.calls[model] += 1
        if model.startswith("flaky:"):
            _, status, n = model.split(":")
            if self.calls[model] <= int(n):
                await self._json(send, int(status), {"error": {"message": "flaky upstream", "type": "server_error"}}, retry_after="0")
                return
            model = "echo"
        if model == "guard" or model.startswith(("guard-garbage", "guard-slow:")):
            if model.startswith("guard-slow:"):
                await asyncio.sleep(int(model.split(":")[1]) / 1000)
            answer = "I am not sure what you mean." if model == "guard-garbage" else llama_guard_answer(_guarded_text(endpoint, req))
            if endpoint == "completions":
                choice: dict[str, Any] = {"index": 0, "text": answer, "finish_reason": "stop"}
            else:
                choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            await self._json(send, 200, {"id": "guard", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]})
            return
        if model == "tool-call":
            await self._tool_call(send, req)
            return
        if model.startswith("bad-request"):
            await self._json(send, 400, {"error": {"message": "upstream says: temperature too spicy", "type": "invalid_request_error", "param": "temperature", "code": "bad_temp"}})
            return
        try:
            await self.engine.delay(model)
            self.engine.check_fault(model)
        except UpstreamFailure as f:
            await self._json(send, f.status or 500, {"error": {"message": f.message, "type": "server_error"}},
                             retry_after=None if f.retry_after is None else str(int(f.retry_after)))
            return
        if not req.get("stream"):
            await self._json(send, 200, self.engine.complete(endpoint, model, req))  # type: ignore[arg-type]
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if model == "hang-stream":
            await send({"type": "http.response.body", "body": b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"wait"},"finish_reason":null}]}\n\n', "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        try:
            async for ev in self.engine.stream_events(endpoint, model, req):  # type: ignore[arg-type]
                await send({"type": "http.response.body", "body": b"data: " + ev + b"\n\n", "more_body": True})
        except UpstreamFailure:
            raise RuntimeError("fake upstream breaks the connection mid-stream") from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _tool_call(self, send: Any, req: dict[str, Any]) -> None:
        args = str((req.get("messages") or [{}])[-1].get("content", ""))
        call = {"id": "call_1", "type": "function", "function": {"name": "run", "arguments": args}}
        base = {"id": "tc", "created": 0, "model": "tool-call"}
        if not req.get("stream"):
            msg = {"role": "assistant", "content": None, "tool_calls": [call]}
            await self._json(send, 200, {**base, "object": "chat.completion", "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}]})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "run", "arguments": ""}}
        await send({"type": "http.response.body", "body": event({"role": "assistant", "tool_calls": [first]}), "more_body": True})
        for i in range(0, len(args), 8):
            piece = {"index": 0, "function": {"arguments": args[i : i + 8]}}
            await send({"type": "http.response.body", "body": event({"tool_calls": [piece]}), "more_body": True})
        await send({"type": "http.response.body", "body": event({}, "tool_calls") + b"data: [DONE]\n\n", "more_body": False})

    async def _messages(self, req: dict[str, Any], send: Any) -> None:
        """An Anthropic Messages upstream: the same mock behaviours, spoken in that protocol."""
        self.requests.append(req)
        if "max_tokens" not in req or not isinstance(req.get("messages"), list):
            await self._json(send, 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens and messages are required"}})
            return
        model = str(req.get("model"))
        self.calls[model] += 1
        core = chat_proto.request_out(anthropic_proto.request_in(req))  # the mock engine reads Chat bodies
        try:
            await self.engine.delay(model)
            self.engine.check_fault(model)
        except UpstreamFailure as f:
            await self._json(send, f.status or 500, {"type": "error", "error": {"type": "api_error", "message": f.message}})
            return
        if not req.get("stream"):
            reply = anthropic_proto.reply_from_core(self.engine.reply("chat", model, core), model)
            await self._json(send, 200, reply)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        enc = anthropic_proto.MessagesStreamEncoder(model)
        core["stream_options"] = {"include_usage": True}
        async for ch in self.engine.chunks("chat", model, core):
            data = enc.done() if ch is END else enc.chunk(ch)
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _json(send: Any, status: int, obj: Any, retry_after: str | None = None) -> None:
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(obj)})


def target(upstream_url: str, model: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    t = {"name": name or model, "provider": "openai", "base_url": upstream_url + "/v1", "model": model, "api_key": "sk-upstream"}
    t.update(kw)
    return t


def anthropic_target(upstream_url: str, model: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
    t = {"name": name or f"anthropic:{model}", "provider": "anthropic", "base_url": upstream_url + "/v1", "model": model, "api_key": "sk-ant-upstream"}
    t.update(kw)
    return t


def make_settings(routes: list[dict[str, Any]], **sections: Any) -> Settings:
    raw: dict[str, Any] = {
        "auth": {"keys": [{"id": "test-key", "tenant": "test", "key": API_KEY}]},
        "routes": routes,
        "traffic_log": {"sink": "none"},
        "safety": {"backend": "none"},
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return parse_settings(raw, "<test>")


@contextlib.contextmanager
def gateway(settings: Settings, **kw: Any) -> Iterator[tuple[str, Gatehouse]]:
    app = create_app(settings, **kw)
    with serve_app(app) as srv:
        yield srv.url, app


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true (for effects with no event to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)

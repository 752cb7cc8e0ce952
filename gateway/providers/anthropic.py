"""A native Anthropic Messages upstream (``provider: anthropic``), over the app's shared client.

The neutral request is translated to ``POST {base_url}/messages``
and the reply, stream events, tool calls and usage back (``gateway.protocols.anthropic``),
so any door can be served by a Messages upstream. Transport, timeouts and failure
translation are the OpenAI provider's.
"""

from __future__ import annotations

import httpx
import orjson

from gateway.config import TargetSettings
from gateway.model import Chunk, Reply
from gateway.protocols import anthropic as proto
from gateway.providers.base import TRACEPARENT, Payload, StreamReply, UpstreamFailure, neutral
from gateway.providers.openai import OpenAIProvider
from gateway.types import Endpoint

API_VERSION = "2023-06-01"


class AnthropicProvider(OpenAIProvider):
    def __init__(self, target: TargetSettings, client: httpx.AsyncClient) -> None:
        super().__init__(target, client)
        self.capabilities = frozenset(target.capabilities or ("chat", "streaming"))
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION, **target.headers}
        if target.api_key is not None and target.api_key.get_secret_value():
            headers["x-api-key"] = target.api_key.get_secret_value()
        self.header_items = list(headers.items())
        self.url = httpx.URL(self.base_url + "/messages")

    def _request(self, endpoint: Endpoint, body: Payload) -> httpx.Request:
        if endpoint != "chat":
            raise UpstreamFailure("unsupported", f"an anthropic target serves chat only, not {endpoint}")
        content = orjson.dumps(proto.request_out(neutral(body), self.target.model))
        headers = [*self.header_items, ("host", self.url.netloc.decode("ascii")), ("content-length", str(len(content)))]
        traceparent = TRACEPARENT.get()
        if traceparent is not None:
            headers.append(("traceparent", traceparent))
        return httpx.Request("POST", self.url, content=content, headers=headers, extensions={"timeout": self.timeout})

    async def complete(self, endpoint: Endpoint, body: Payload) -> Reply:
        reply = await self._json(endpoint, body)
        if reply.get("type") != "message":
            raise UpstreamFailure("status", "the anthropic upstream did not answer with a message", status=502)
        return proto.reply_to_core(reply, self.target.model)

    async def stream(self, endpoint: Endpoint, body: Payload) -> StreamReply:
        resp = await self._open(endpoint, body)
        decoder = proto.MessagesStreamDecoder(self.target.model)

        def decode(events: list[bytes]) -> list[Chunk]:
            try:
                return [ch for ev in events for ch in decoder.feed(ev)]
            except ValueError as exc:
                raise UpstreamFailure("drop", f"the anthropic upstream sent an error event: {exc}") from exc

        return StreamReply(self._events(resp, decode))

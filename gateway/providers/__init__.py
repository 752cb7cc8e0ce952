"""Upstream providers: one module each behind one small interface.

``openai``: any OpenAI-compatible HTTP upstream (OpenAI, vLLM, Ollama, TGI).
``anthropic``: a native Anthropic Messages upstream (translated both ways).
``local``: in-process models from a local directory (transformers causal LM,
sentence-transformers embeddings). ``mock``: deterministic behaviour chosen by
model name, for demos and tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import TargetSettings
from gateway.providers.base import TRACEPARENT as TRACEPARENT
from gateway.providers.base import Provider as Provider
from gateway.providers.base import StreamReply as StreamReply
from gateway.providers.base import UpstreamFailure as UpstreamFailure
from gateway.providers.base import split_sse as split_sse

if TYPE_CHECKING:
    import httpx


def build_provider(target: TargetSettings, client: httpx.AsyncClient) -> Provider:
    if target.provider == "openai":
        from gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(target, client)
    if target.provider == "anthropic":
        from gateway.providers.anthropic import AnthropicProvider

        return AnthropicProvider(target, client)
    if target.provider == "mock":
        from gateway.providers.mock import MockProvider

        return MockProvider(target)
    if target.provider == "local":
        from gateway.providers.local import LocalProvider

        return LocalProvider(target)
    raise ValueError(f"unknown provider {target.provider!r}")

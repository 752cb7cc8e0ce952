"""Settings types shared by the gateway, evaluators and tuning.

The gateway's ``Settings`` (``gateway/config.py``) embeds these sections; evaluators and
tuning build them directly (a quality run, a dataset filter) without the serving config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SafetySettings(Strict):
    # categories (default): every harm category of evaluators.safety.taxonomy plus the legacy
    # toxicity / identity_attack, from one MiniLM embedding; minilm-head: the legacy two only
    backend: Literal["categories", "minilm-head", "detoxify", "none"] = "categories"
    checkpoint: str | None = None  # detoxify: local .ckpt
    checkpoint_sha256: str | None = None
    model_dir: str | None = None  # detoxify: local config/tokenizer directory; minilm-head/categories: embedder
    head: str | None = None  # minilm-head: trained head artifact; categories: the legacy head (default: shipped)
    artifact_dir: str | None = None  # categories: head.npz + MANIFEST.json directory (default: shipped)
    max_batch: int = Field(32, ge=1)
    # 0: an idle model runs at once with whatever is queued; texts that arrive while it is
    # busy form the next batch. A wait only pays when a batched forward pass is cheaper per
    # text (torch, detoxify); the default int8 runtime runs one text at a time anyway.
    max_wait_ms: float = Field(0.0, ge=0)

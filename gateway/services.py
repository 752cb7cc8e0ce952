"""Process-wide services built once in the lifespan and handed to stages."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Settings
from gateway.metrics import Metrics


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    redis: Any = None  # redis.asyncio.Redis when redis.url is set
    config_path: Path | None = None
    prompt_registry: Any = None  # set by gateway.prompts.build_stage; used by the admin routes
    guard: Any = None  # policies.guard.GuardTransport over the live router (set by the Runtime)
    # set by the guardrail stage: (ctx, passages) -> the passages to inject (None = dropped);
    # grounding calls it before it injects retrieved text
    passage_check: Any = None
    _embedder: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def embedder(self) -> Any:
        """The process-wide sentence embedder (shared by safety scoring and grounding)."""
        with self._lock:
            if self._embedder is None:
                from evaluators.embedding import shared_embedder

                path = self.settings.grounding.embedder
                self._embedder = shared_embedder(self.settings.resolve_path(path) if path else None)
            return self._embedder

"""The offline default backend: shared MiniLM embeddings + a small numpy head."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.embedding import Embedder
from evaluators.safety.head import Head, sha256_file
from evaluators.safety.windows import WindowedScorer, split_sentences, split_windows

log = logging.getLogger("gatehouse.safety")

ARTIFACT_DIR = Path(__file__).parent / "artifacts"
DEFAULT_HEAD = ARTIFACT_DIR / "minilm_head.npz"
# A window is as long as MiniLM reads (256 word pieces with [CLS]/[SEP]); the head was
# trained on single sentences, and mean pooling dilutes one bad sentence inside a long
# text, so a text longer than one window is scored as its windows *and* its sentences.
WINDOW_TOKENS = 254
WINDOW_OVERLAP = 64


def minilm_units(text: str, tokenizer: Any, window: int, overlap: int) -> list[str]:
    """A text that fits one window is scored as itself (its embedding is then cached
    for grounding); a longer one as its token windows plus its sentences.

    Sentences are added only past one window because on short real comments the
    max over sentences mostly adds false positives (Wikipedia dev ROC-AUC fell from
    ~0.8 to ~0.67 when every comment over 64 tokens was split)."""
    windows = split_windows(text, tokenizer, window, overlap)
    if len(windows) == 1:
        return windows
    sentences = [
        piece for s in split_sentences(text) for piece in split_windows(s, tokenizer, window, overlap)
    ]
    return list(dict.fromkeys(windows + sentences))


class MiniLMScorer(WindowedScorer):
    """Shared by the scorers that read numpy heads over one MiniLM embedding per window
    (``minilm-head``, ``categories``): the checks at load and the window plumbing."""

    embedder: Embedder

    def _init_minilm(
        self,
        embedder: Embedder,
        heads: Sequence[tuple[Head, Path]],
        manifest: dict[str, Any],
        *,
        retrain: str,
        window: int,
        overlap: int,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        for head, path in heads:
            if head.input_dim != embedder.dimension:
                raise ValueError(
                    f"safety head {path} expects {head.input_dim}-d embeddings but the embedder "
                    f"{embedder.model_dir} gives {embedder.dimension}-d; use the embedder it was trained on"
                )
        trained_with = manifest.get("embedder")
        if not isinstance(trained_with, dict):
            trained_with = {}
        trained_on = trained_with.get("fingerprint_sha256")
        if trained_on and trained_on != embedder.fingerprint:
            # still usable (int8 and fp32 vectors agree to cosine ~0.99), but its
            # measured quality was for the other runtime: say so once, at load
            log.warning(
                "safety head %s was trained on %s embeddings (%s) but the embedder is %s (%s); "
                "scores shift slightly. Retrain with `%s` or set embedding.runtime to match",
                heads[0][1], trained_with.get("runtime", "torch"), trained_on[:12],
                embedder.runtime, embedder.fingerprint[:12], retrain,
            )
        self.embedder = embedder
        self.tokenizer = embedder.tokenizer
        self.window = window
        self.overlap = overlap
        self._init_batcher(max_batch, max_wait, on_batch)

    def units(self, text: str) -> list[str]:
        return minilm_units(text, self.tokenizer, self.window, self.overlap)


class MiniLMHeadScorer(MiniLMScorer):
    """Scores only the labels the head was trained for (see artifacts/MANIFEST.json)."""

    def __init__(
        self,
        embedder: Embedder,
        head_path: str | Path | None = None,
        *,
        window: int = WINDOW_TOKENS,
        overlap: int = WINDOW_OVERLAP,
        max_batch: int = 32,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        path = Path(head_path) if head_path else DEFAULT_HEAD
        if not path.exists():
            raise FileNotFoundError(
                f"no safety head at {path}; train one with "
                "`python -m tuning.train_safety_head --out evaluators/safety/artifacts`"
            )
        self.head = Head.load(path)
        self.head_sha256 = sha256_file(path)
        self.name = f"minilm-head@{self.head_sha256[:12]}"
        self.labels = self.head.labels
        manifest = path.parent / "MANIFEST.json"
        self.manifest = json.loads(manifest.read_text()) if manifest.exists() else {}
        self._init_minilm(
            embedder, [(self.head, path)], self.manifest, retrain="python -m tuning.train_safety_head",
            window=window, overlap=overlap, max_batch=max_batch, max_wait=max_wait, on_batch=on_batch,
        )

    def _score_windows(self, texts: Sequence[str]) -> np.ndarray:
        return self.head.predict_proba(self.embedder.encode(list(texts)))

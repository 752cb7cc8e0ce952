"""The default scorer (``safety.backend: categories``): every harm category of the taxonomy.

One MiniLM forward per text window (the shared ``Embedder``, int8 ONNX by default), then
two small numpy heads on the same vector:

- the category head (``artifacts/categories/head.npz``, trained by
  ``python -m tuning.train_safety_categories``): ``violence, crime, self_harm, sexual,
  sexual_minors, hate, threat, jailbreak, prompt_injection``;
- the legacy head (``artifacts/minilm_head.npz``): ``toxicity, identity_attack``, so
  policies written for ``minilm-head`` keep working unchanged.

So the full category set costs what the toxicity-only check cost: one embedding and a
(384 x 11) matrix product. Long texts are windows plus sentences, max per category, as
for ``minilm-head``. English only (``languages``); other languages are reported as
``unscored_language`` by the policy engine (``evaluators.safety.language``).

A missing or inconsistent artifact is an error at load (a startup error in the gateway).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evaluators.embedding import Embedder
from evaluators.safety import taxonomy as tx
from evaluators.safety.head import Head, sha256_file
from evaluators.safety.minilm_head import DEFAULT_HEAD, WINDOW_OVERLAP, WINDOW_TOKENS, MiniLMScorer

CATEGORIES_DIR = Path(__file__).parent / "artifacts" / "categories"
HEAD_FILE = "head.npz"


class CategoryScorer(MiniLMScorer):
    """Harm categories + legacy toxicity labels from one MiniLM embedding per window."""

    def __init__(
        self,
        embedder: Embedder,
        artifact_dir: str | Path | None = None,
        *,
        legacy_head: str | Path | None = None,
        window: int = WINDOW_TOKENS,
        overlap: int = WINDOW_OVERLAP,
        max_batch: int = 32,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        d = Path(artifact_dir) if artifact_dir else CATEGORIES_DIR
        head_path, manifest_path = d / HEAD_FILE, d / "MANIFEST.json"
        for p in (head_path, manifest_path):
            if not p.exists():
                raise FileNotFoundError(
                    f"safety backend 'categories' needs {p}; train it with "
                    "`python -m tuning.train_safety_categories --data DIR --out evaluators/safety/artifacts/categories`"
                )
        self.manifest = json.loads(manifest_path.read_text())
        self.head_sha256 = sha256_file(head_path)
        if self.manifest.get("sha256") != self.head_sha256:
            raise ValueError(
                f"{head_path} does not match its MANIFEST.json (sha256 {self.head_sha256[:12]} vs "
                f"{str(self.manifest.get('sha256'))[:12]}): retrain or restore both together"
            )
        self.head = Head.load(head_path)
        unknown = set(self.head.labels) - tx.ALL_CATEGORIES
        if unknown:
            raise ValueError(f"{head_path} scores {sorted(unknown)}, which are not taxonomy categories")
        legacy_path = Path(legacy_head) if legacy_head else DEFAULT_HEAD
        if not legacy_path.exists():
            raise FileNotFoundError(f"no legacy safety head at {legacy_path} (toxicity, identity_attack)")
        self.legacy = Head.load(legacy_path)
        self.labels = self.head.labels + tuple(lbl for lbl in self.legacy.labels if lbl not in self.head.labels)
        self._legacy_cols = [self.legacy.labels.index(lbl) for lbl in self.labels[len(self.head.labels):]]
        self.languages = frozenset(self.manifest.get("languages", ["en"]))
        self.thresholds: dict[str, float] = dict(self.manifest.get("recommended_thresholds", {}))
        self.name = f"categories@{self.head_sha256[:12]}"
        self._init_minilm(
            embedder, [(self.head, head_path), (self.legacy, legacy_path)], self.manifest,
            retrain="python -m tuning.train_safety_categories --data DIR",
            window=window, overlap=overlap, max_batch=max_batch, max_wait=max_wait, on_batch=on_batch,
        )

    def _score_windows(self, texts: Sequence[str]) -> np.ndarray:
        x = self.embedder.encode(list(texts))
        return np.concatenate([self.head.predict_proba(x), self.legacy.predict_proba(x)[:, self._legacy_cols]], axis=1)


__all__ = ["CATEGORIES_DIR", "CategoryScorer"]

"""The default scorer (``safety.backend: categories``): every harm category of the taxonomy.

One MiniLM forward per text window (the shared ``Embedder``, int8 ONNX by default), then
two small numpy heads on the same vector:

- the category head (``artifacts/categories/head.npz``, trained by
  ``python -m tuning.train_safety_categories``): ``violence, crime, self_harm, sexual,
  sexual_minors, hate, threat, jailbreak, prompt_injection``;
- the legacy head (``artifacts/minilm_head.npz``): ``toxicity, identity_attack``, so
  policies written for ``minilm-head`` keep working unchanged.

So the full category set costs what the toxicity-only check cost: one embedding and a
(384 x 11) matrix product. Long texts: every category is the max over the text's
254-token windows; past 128 tokens ``prompt_injection`` and ``jailbreak`` also over its
sentence-aligned chunks of 64 tokens and its confident single sentences (a planted
instruction is one sentence in a long email, diluted in a mean-pooled window); the legacy
labels also over its sentences past one window, as for ``minilm-head``. The rule is the
artifact MANIFEST's ``long_texts``. English only (``languages``); other languages are reported as
``unscored_language`` by the policy engine (``evaluators.safety.language``).

A missing or inconsistent artifact is an error at load (a startup error in the gateway).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.embedding import Embedder
from evaluators.safety import taxonomy as tx
from evaluators.safety.head import Head, sha256_file
from evaluators.safety.minilm_head import DEFAULT_HEAD, WINDOW_OVERLAP, WINDOW_TOKENS, MiniLMScorer
from evaluators.safety.windows import split_chunks, split_sentences, split_windows

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
        self.read_long_texts(self.manifest.get("long_texts"))

    def read_long_texts(self, rule: dict[str, Any] | None) -> None:
        """How long texts are read: the MANIFEST's ``long_texts`` (so scoring matches what was
        measured); a different rule only to measure it (``tests/bench/bench_safety_scorer.py``).

        Without a ``long_texts`` entry (older artifacts) every label is the max over the
        text's windows, plus its sentences past one window, as for ``minilm-head``."""
        self.chunk_tokens = int(rule.get("chunk_tokens", 0)) if rule else 0
        self.chunk_overlap = int(rule.get("chunk_overlap", 0)) if rule else 0
        self.chunk_min_tokens = int(rule.get("chunk_min_tokens", 0)) if rule else 0
        self.sentence_min = float(rule.get("sentence_min", 1.0)) if rule else 1.0
        chunked = set(rule.get("chunked_categories", ())) if rule and self.chunk_tokens else set()
        n_head = len(self.head.labels)
        self._chunk_cols = [j for j, lbl in enumerate(self.labels) if lbl in chunked]
        # legacy toxicity / identity_attack keep minilm-head's reading (windows and sentences)
        self._sentence_cols = list(range(n_head, len(self.labels))) if rule else list(range(len(self.labels)))

    def units(self, text: str) -> list[str]:
        return list(dict.fromkeys(u for group in self._unit_groups(text) for u in group))

    def _unit_groups(self, text: str) -> tuple[list[str], list[str], list[str], list[str]]:
        """(token windows, sentences past one window, chunks, sentences past one chunk).

        A text that fits one window is its only window (so grounding's cache lookup of
        the same text hits); one of at most ``chunk_min_tokens`` has no chunks and no
        sentences (a chat reply of ~80 tokens costs one forward, as before)."""
        tok = self.tokenizer
        windows = split_windows(text, tok, self.window, self.overlap)
        chunks = (split_chunks(text, tok, self.chunk_tokens, self.chunk_overlap, self.chunk_min_tokens)
                  if self._chunk_cols else [text])
        if len(windows) == 1 and len(chunks) == 1:
            return windows, [], [], []
        sentences = [piece for s in split_sentences(text) for piece in split_windows(s, tok, self.window, self.overlap)]
        return (windows, sentences if len(windows) > 1 else [], chunks if len(chunks) > 1 else [],
                sentences if len(chunks) > 1 else [])

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
        """Blocking: one ``{label: probability}`` per text. Every unit of every text in the
        batch (windows, chunks, sentences; each distinct piece once) goes through one
        ``encode`` call. Every label is the max over the text's windows; the legacy labels
        also over its sentences (past one window); ``chunked_categories`` also over its
        chunks, and over its sentences where a sentence alone scores at least
        ``sentence_min`` (a planted "ignore previous instructions ..." line: ordinary email
        sentences such as "In case of problems please contact the relevant service provider"
        score up to 0.90 on their own, so a lone sentence must be surer than that to count)."""
        if not texts:
            return []
        index: dict[str, int] = {}
        plans = [[[index.setdefault(u, len(index)) for u in g] for g in self._unit_groups(t)] for t in texts]
        probs = self._score_windows(list(index))
        gated = np.where(probs >= self.sentence_min, probs, 0.0)
        out = []
        for windows, sentences, chunks, chunk_sentences in plans:
            row = probs[windows].max(axis=0)
            for p, cols, units in ((probs, self._sentence_cols, sentences), (probs, self._chunk_cols, chunks),
                                   (gated, self._chunk_cols, chunk_sentences)):
                if units and cols:
                    row[cols] = np.maximum(row[cols], p[np.ix_(units, cols)].max(axis=0))
            out.append({label: float(row[j]) for j, label in enumerate(self.labels)})
        return out

    def _score_windows(self, texts: Sequence[str]) -> np.ndarray:
        x = self.embedder.encode(list(texts))
        return np.concatenate([self.head.predict_proba(x), self.legacy.predict_proba(x)[:, self._legacy_cols]], axis=1)


__all__ = ["CATEGORIES_DIR", "CategoryScorer"]

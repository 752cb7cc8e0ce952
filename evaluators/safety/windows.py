"""Overlapping token windows, so long texts are scored whole rather than truncated."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluators.batching import MicroBatcher


def split_windows(text: str, tokenizer: Any, window: int, overlap: int) -> list[str]:
    """Split ``text`` into substrings of at most ``window`` tokens overlapping by ``overlap``.

    A text that fits is returned unchanged (so embedding caches keyed by the exact
    text are shared with other evaluators). Windows are character slices of the
    original text, found through the tokenizer's offset mapping.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if len(text) <= window:  # a token covers at least one character
        return [text]
    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
    )
    offsets = enc["offset_mapping"]
    if len(offsets) <= window:
        return [text]
    step = window - overlap
    out: list[str] = []
    start = 0
    while True:
        end = min(start + window, len(offsets))
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return out
        start += step


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Rough sentence split (terminal punctuation or newlines); empty pieces dropped."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def split_chunks(text: str, tokenizer: Any, chunk: int, overlap: int, min_tokens: int = 0) -> list[str]:
    """Sentence-aligned pieces of ``text`` of at most ``chunk`` tokens.

    Whole sentences are packed greedily into a chunk; the next chunk starts with the
    trailing sentences of the previous one that fit in ``overlap`` tokens, so a
    two-sentence instruction cut at a chunk boundary is still whole in one chunk. A
    sentence longer than ``chunk`` is cut into token windows (``split_windows``). A text
    of at most ``max(chunk, min_tokens)`` tokens is returned unchanged. One tokenizer call
    per text; chunks are character slices of the original text.
    """
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got {chunk}, {overlap}")
    if len(text) <= max(chunk, min_tokens):  # a token covers at least one character
        return [text]
    offsets = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
    )["offset_mapping"]
    n = len(offsets)
    if n <= max(chunk, min_tokens):
        return [text]
    starts = [a for a, _ in offsets]
    # sentences as token ranges [a, b): the tokens that start inside each sentence's span
    spans: list[tuple[int, int]] = []
    pos = 0
    for cut in [m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        a, b = bisect.bisect_left(starts, pos), bisect.bisect_left(starts, cut)
        while b - a > chunk:  # a run-on sentence: token windows of it
            spans.append((a, a + chunk))
            a += chunk - overlap
        if b > a:
            spans.append((a, b))
        pos = cut
    out: list[str] = []
    i = 0
    while i < len(spans):
        j = i
        while j + 1 < len(spans) and spans[j + 1][1] - spans[i][0] <= chunk:
            j += 1
        out.append(text[offsets[spans[i][0]][0] : offsets[spans[j][1] - 1][1]])
        if j == len(spans) - 1:
            break
        k = j + 1  # the next chunk: back up over whole sentences that fit in the overlap
        while k - 1 > i and spans[j][1] - spans[k - 1][0] <= overlap:
            k -= 1
        i = k
    return out


class WindowedScorer:
    """Shared plumbing: windows → ``_score_windows`` → max per label; async via MicroBatcher.

    Subclasses set ``name``, ``labels``, ``window``, ``overlap``, ``tokenizer`` and
    implement ``_score_windows(texts) -> (n, len(labels)) array`` of probabilities.
    """

    name: str
    labels: tuple[str, ...]
    window: int
    overlap: int
    tokenizer: Any
    # ISO 639-1 codes of the languages the model was trained and measured on; text in
    # any other language is reported as unscored_language, never as safe
    languages: frozenset[str] = frozenset({"en"})

    @property
    def categories(self) -> frozenset[str]:
        """The categories this scorer produces (taxonomy names)."""
        return frozenset(self.labels)

    def _init_batcher(
        self, max_batch: int, max_wait: float, on_batch: Callable[[int], None] | None
    ) -> None:
        self.batcher: MicroBatcher[str, dict[str, float]] = MicroBatcher(
            self.score_batch, max_batch=max_batch, max_wait=max_wait, on_batch=on_batch,
            name="safety",
        )

    def _score_windows(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def units(self, text: str) -> list[str]:
        """The pieces of ``text`` that are scored; the text's score is their max."""
        return split_windows(text, self.tokenizer, self.window, self.overlap)

    def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
        """Blocking: one ``{label: probability}`` per text (max over its windows)."""
        if not texts:
            return []
        pieces: list[str] = []
        owner: list[int] = []
        for i, t in enumerate(texts):
            for w in self.units(t):
                pieces.append(w)
                owner.append(i)
        probs = self._score_windows(pieces)
        best = np.full((len(texts), len(self.labels)), -np.inf)
        np.maximum.at(best, np.asarray(owner), probs)
        return [
            {label: float(row[j]) for j, label in enumerate(self.labels)} for row in best
        ]

    async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
        """Off the event loop, micro-batched with concurrent callers."""
        if not texts:
            return []
        return await self.batcher.submit_many(list(texts))

    async def aclose(self) -> None:
        await self.batcher.aclose()

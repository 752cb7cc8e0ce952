"""BM25 beside the dense index, and the fusion of the two rankings.

Lexical matching finds what embeddings blur: a product code (``GH-7731``), a
number, a name. ``LexicalIndex`` is a bm25s index over the same rows as the
FAISS index (row i = chunk i), built and saved into the same version directory
(``bm25/``), so an add or delete rewrites both at once.

Tokens: words for scripts written with spaces, MeCab morphemes (fugashi +
unidic-lite) for Japanese and other Han/kana runs, the same cutting as the
recitation index (``evaluators.recitation.text``), so "GH-7731を交換" gives
``gh``, ``7731``, ``を``, ``交換``. A small stop list (English function words,
Japanese particles and punctuation-like auxiliaries) keeps them from matching
everything.

Fusion (``Fusion``): reciprocal rank fusion over the top ``candidates`` of each
ranking, ``score = sum_i w_i / (k + rank_i)``, divided by its maximum
``sum_i w_i / (k + 1)`` so a chunk ranked first by both scores 1.0. RRF needs no
score calibration between cosine and BM25, and a chunk found by only one of them
still ranks. ``min_score`` keeps its meaning (the dense cosine floor), see
``GroundingIndex.search``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from evaluators.recitation.text import Tokenizer

LEXICAL_DIR = "bm25"
TOKENIZER_ID = "words+ja-morphemes-v1"
# Function words that would otherwise match every chunk (BM25's idf only softens them).
STOPWORDS = frozenset(
    """a an and are as at be by can do does for from has have how i in is it its of on or
    the to was what when where which who why will with you your this that these those
    は が を に で と の も へ や か て た だ です ます ある いる する れる られる な ない""".split()
)


_TOKENIZER = Tokenizer("morpheme")


def lexical_tokens(text: str) -> list[str]:
    return [w for w in _TOKENIZER(text).words if w not in STOPWORDS]


def tokenizer_spec() -> dict[str, str]:
    return {"id": TOKENIZER_ID, **Tokenizer("morpheme").spec(), "bm25s": version("bm25s")}


@dataclass(frozen=True)
class Fusion:
    """How dense and BM25 rankings are combined; recorded in the manifest and the traffic record."""

    method: str = "rrf"
    k: int = 60
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    candidates: int = 50  # taken from each ranking before fusing

    def __post_init__(self) -> None:
        if self.method != "rrf":
            raise ValueError(f"fusion method must be 'rrf', got {self.method!r}")
        if self.k < 1 or self.candidates < 1 or min(self.dense_weight, self.bm25_weight) < 0:
            raise ValueError("fusion needs k >= 1, candidates >= 1 and non-negative weights")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fuse(self, dense: list[int], lexical: list[int]) -> list[tuple[float, int]]:
        """(fused score in [0, 1], row), best first; ``dense``/``lexical`` are rows, best first."""
        top = (self.dense_weight + self.bm25_weight) / (self.k + 1)
        scores: dict[int, float] = {}
        for weight, rows in ((self.dense_weight, dense), (self.bm25_weight, lexical)):
            for rank, row in enumerate(rows[: self.candidates], 1):
                scores[row] = scores.get(row, 0.0) + weight / (self.k + rank)
        return sorted(((s / top, r) for r, s in scores.items()), key=lambda p: (-p[0], p[1]))


class LexicalIndex:
    """bm25s over chunk rows. Read-only after build; searches are thread-safe."""

    def __init__(self, bm25: Any, rows: int) -> None:
        self.bm25 = bm25
        self.rows = rows
        self._vocab: dict[str, int] = bm25.vocab_dict

    @classmethod
    def build(cls, texts: list[str], *, k1: float = 1.2, b: float = 0.75) -> LexicalIndex:
        import bm25s

        bm25 = bm25s.BM25(k1=k1, b=b)
        # an empty token list would leave a row out of bm25s' matrix; a placeholder keeps row ids
        bm25.index([lexical_tokens(t) or ["\u2205"] for t in texts], show_progress=False)
        return cls(bm25, len(texts))

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory / LEXICAL_DIR))

    @classmethod
    def load(cls, directory: Path, rows: int) -> LexicalIndex:
        import bm25s

        d = directory / LEXICAL_DIR
        if not (d / "params.index.json").is_file():
            raise FileNotFoundError(f"{d}: BM25 part missing; rebuild with `gatehouse index build`")
        bm25 = bm25s.BM25.load(str(d), mmap=False)
        n = int(json.loads((d / "params.index.json").read_text(encoding="utf-8")).get("num_docs", rows))
        if n != rows:
            raise ValueError(f"{d}: BM25 holds {n} rows but the chunk table has {rows}; rebuild the index")
        return cls(bm25, rows)

    def search(self, query: str, k: int) -> list[tuple[float, int]]:
        """(BM25 score, row) of the best ``k`` rows with a positive score, best first."""
        tokens = [t for t in lexical_tokens(query) if t in self._vocab]
        if not tokens or self.rows == 0:
            return []
        docs, scores = self.bm25.retrieve([tokens], k=min(k, self.rows), show_progress=False, n_threads=1)
        return [(float(s), int(r)) for r, s in zip(docs[0], scores[0], strict=True) if s > 0]


def bm25_params(lex: LexicalIndex) -> dict[str, Any]:
    return {"k1": float(lex.bm25.k1), "b": float(lex.bm25.b), "method": str(lex.bm25.method)}

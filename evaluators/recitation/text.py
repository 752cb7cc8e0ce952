"""Tokens, normalisation and shingle hashing shared by index builds and queries.

Both sides of a comparison must tokenise and hash identically, so everything
that affects a token's value lives here and is named by ``NORMALISATION``,
``SHINGLE_HASH`` and the ``Tokenizer.spec()``, which the index manifest records
and ``load`` checks.

Scripts written with spaces (Latin, Cyrillic, Greek, Hangul, ...) are cut into
words. Scripts written without them (Japanese kana and kanji, Chinese hanzi,
Thai) would otherwise be one "word" per sentence, so a run of them is cut into
characters (``char``) or, for Han and kana, into morphemes with MeCab
(fugashi + unidic-lite, ``morpheme``). The unit is chosen per script and
recorded; a text mixing Japanese and English gets words for the English and
morphemes (or characters) for the Japanese.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

NORMALISATION = "nfkc-casefold-alnum-v2"
SHINGLE_HASH = "blake2b64-poly-splitmix-v1"
CJK_UNITS = ("morpheme", "char")

# Han (CJK unified + ext A + compatibility), kana (incl. halfwidth), iteration marks.
_CJK = "\u3005\u3006\u3007\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_THAI = "\u0e00-\u0e7f"
# A word is a run of letters/digits outside those scripts, inner apostrophes kept so that
# "don't" and "dont" normalise alike. Underscores (Gutenberg's _italics_) and hyphens split.
_TOKEN = re.compile(
    rf"(?P<cjk>[{_CJK}]+)|(?P<thai>[{_THAI}]+)"
    rf"|(?P<word>[^\W_{_CJK}{_THAI}]+(?:['\u2019][^\W_{_CJK}{_THAI}]+)*)"
)
_APOSTROPHES = str.maketrans("", "", "'\u2019")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd, so each step is a bijection mod 2^64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Tokens:
    """Normalised tokens of a text and the character span of each in the original."""

    words: list[str]
    spans: np.ndarray  # (n, 2) int64 [start, end) offsets into the original text

    def __len__(self) -> int:
        return len(self.words)


def normalise_word(raw: str) -> str:
    if raw.isascii():
        return raw.lower().replace("'", "")
    return unicodedata.normalize("NFKC", raw).casefold().translate(_APOSTROPHES)


class _Morphemes:
    """A lazily built, lock-guarded MeCab tagger (fugashi + unidic-lite)."""

    def __init__(self) -> None:
        self._tagger: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        try:
            import fugashi
            import unidic_lite
        except ImportError as exc:  # pragma: no cover - both are dependencies
            raise RuntimeError(
                "morpheme tokenisation needs fugashi and unidic-lite (`pip install fugashi unidic-lite`), "
                "or build the index with --cjk char"
            ) from exc
        del unidic_lite  # fugashi finds the dictionary itself; imported to fail early and clearly
        self._tagger = fugashi.Tagger()
        return self._tagger

    def split(self, run: str) -> list[tuple[int, int]]:
        """Character spans of the morphemes of ``run`` (a run of Han/kana, no spaces)."""
        with self._lock:  # MeCab taggers are not thread-safe
            tagger = self._tagger or self._load()
            surfaces = [w.surface for w in tagger(run)]
        spans: list[tuple[int, int]] = []
        pos = 0
        for s in surfaces:
            at = run.find(s, pos)
            if at < 0:  # MeCab normalised something: fall back to characters from here
                spans.extend((i, i + 1) for i in range(pos, len(run)))
                return spans
            spans.append((at, at + len(s)))
            pos = at + len(s)
        return spans


MORPHEMES = _Morphemes()


@dataclass(frozen=True)
class Tokenizer:
    """How a text becomes tokens: words for spaced scripts, ``cjk`` units for Han/kana."""

    cjk: str = "morpheme"

    def __post_init__(self) -> None:
        if self.cjk not in CJK_UNITS:
            raise ValueError(f"cjk unit must be one of {', '.join(CJK_UNITS)}, got {self.cjk!r}")

    def spec(self) -> dict[str, str]:
        """What the manifest records, per script (with the dictionary version for morphemes)."""
        cjk = "char"
        if self.cjk == "morpheme":
            from importlib.metadata import version

            cjk = f"morpheme:unidic-lite-{version('unidic-lite')}"  # the dictionary decides the cuts
        return {"spaced": "word", "han+kana": cjk, "thai": "char"}

    def __call__(self, text: str) -> Tokens:
        words: list[str] = []
        offsets: list[int] = []
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            if kind == "word":
                word = normalise_word(m.group())
                if word:
                    words.append(word)
                    offsets += (m.start(), m.end())
                continue
            run, base = m.group(), m.start()
            if kind == "cjk" and self.cjk == "morpheme":
                pieces = MORPHEMES.split(run)
            else:
                pieces = [(i, i + 1) for i in range(len(run))]
            for s, e in pieces:
                word = normalise_word(run[s:e])
                if word:
                    words.append(word)
                    offsets += (base + s, base + e)
        spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        return Tokens(words, spans)


DEFAULT_TOKENIZER = Tokenizer()


def tokenize(text: str, tokenizer: Tokenizer = DEFAULT_TOKENIZER) -> Tokens:
    return tokenizer(text)


def word_hashes(words: list[str]) -> np.ndarray:
    """64-bit blake2b of each normalised token."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    table = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            for w in vocab
        ),
        dtype=np.uint64,
        count=len(vocab),
    )
    ids = np.fromiter((vocab[w] for w in words), dtype=np.int64, count=len(words))
    out: np.ndarray = table[ids]
    return out


def _splitmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    out: np.ndarray = h ^ (h >> np.uint64(31))
    return out


def shingle_hashes(words: list[str], k: int, wh: np.ndarray | None = None) -> np.ndarray:
    """64-bit hash of each k-token shingle, ``len(words) - k + 1`` of them (or none).

    A polynomial over per-token blake2b hashes, vectorised, then avalanched: about
    50x faster than hashing each shingle string, which matters for book corpora.
    """
    m = len(words) - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    if wh is None:
        wh = word_hashes(words)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * _POLY + wh[j : j + m]
        return _splitmix(h)


def minhash_inputs(shingles: np.ndarray) -> np.ndarray:
    """The 32-bit values fed to datasketch's affine32 MinHash scheme."""
    return (shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32)

"""Word normalisation and shingle hashing shared by index builds and queries.

Both sides of a comparison must tokenise and hash identically, so everything
that affects a shingle's value lives here and is named by ``NORMALISATION`` and
``SHINGLE_HASH``, which the index manifest records and ``load`` checks.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

NORMALISATION = "nfkc-casefold-alnum-v1"
SHINGLE_HASH = "blake2b64-poly-splitmix-v1"

# A word is a run of letters/digits, with inner apostrophes kept so that "don't"
# and "dont" normalise alike. Underscores (Gutenberg's _italics_) and hyphens split.
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_APOSTROPHES = str.maketrans("", "", "'\u2019")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd, so each step is a bijection mod 2^64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Tokens:
    """Normalised words of a text and the character span of each in the original."""

    words: list[str]
    spans: np.ndarray  # (n, 2) int64 [start, end) offsets into the original text

    def __len__(self) -> int:
        return len(self.words)


def normalise_word(raw: str) -> str:
    if raw.isascii():
        return raw.lower().replace("'", "")
    return unicodedata.normalize("NFKC", raw).casefold().translate(_APOSTROPHES)


def tokenize(text: str) -> Tokens:
    words: list[str] = []
    offsets: list[int] = []
    for m in _WORD.finditer(text):
        word = normalise_word(m.group())
        if word:
            words.append(word)
            offsets.append(m.start())
            offsets.append(m.end())
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return Tokens(words, spans)


def _word_hashes(words: list[str]) -> np.ndarray:
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


def shingle_hashes(words: list[str], k: int) -> np.ndarray:
    """64-bit hash of each k-word shingle, ``len(words) - k + 1`` of them (or none).

    A polynomial over per-word blake2b hashes, vectorised, then avalanched: about
    50x faster than hashing each shingle string, which matters for book corpora.
    """
    m = len(words) - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    wh = _word_hashes(words)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * _POLY + wh[j : j + m]
        return _splitmix(h)


def minhash_inputs(shingles: np.ndarray) -> np.ndarray:
    """The 32-bit values fed to datasketch's affine32 MinHash scheme."""
    return (shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32)

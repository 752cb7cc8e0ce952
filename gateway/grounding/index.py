"""A loaded grounding index, and the holder that hot-swaps it.

On disk (written by ``gateway.grounding.builder``)::

    INDEX_DIR/
      CURRENT                      name of the live version (replaced atomically)
      v-20250101T120000Z-1a2b3c4d/ one immutable version
        manifest.json              docs, chunk spans, titles, model id + fingerprint, index type, content hash
        chunks.jsonl               one chunk per line, row order = FAISS row id = BM25 row id
        vectors.npy                the unit vectors (float32), for incremental rebuilds and exact re-scoring
        index.faiss
        bm25/                      the BM25 part (bm25s: JSON + .npy), hybrid indexes only

``GroundingIndex.load`` accepts INDEX_DIR (follows CURRENT) or a version
directory. Versions written before hybrid retrieval (format
``gatehouse-grounding/1``, no ``bm25/``) still load, as dense-only indexes. ``IndexHolder.current`` is swapped in one assignment when the
live version's content hash changes; a request that already took
``holder.current`` keeps using the old object until it is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.grounding.lexical import TOKENIZER_ID, Fusion, LexicalIndex, tokenizer_spec

log = logging.getLogger("gatehouse.grounding")

CURRENT = "CURRENT"
MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    score: float  # cosine for dense indexes, the fused RRF score (0-1) for hybrid ones
    dense_score: float | None = None  # hybrid: the chunk's cosine (what min_score is compared with)
    bm25_score: float | None = None  # hybrid: its BM25 score, None when BM25 did not rank it


def num_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # faiss-cpu builds without CUDA, broken drivers
        return 0


def to_gpu(index: Any) -> Any:
    import faiss

    if num_gpus() <= 0:
        return index
    return faiss.index_cpu_to_all_gpus(index)


def resolve_version_dir(path: str | Path) -> Path:
    """INDEX_DIR -> its live version directory; a version directory -> itself."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    cur = p / CURRENT
    if cur.is_file():
        name = cur.read_text(encoding="utf-8").strip()
        if name and (p / name / MANIFEST).is_file():
            return p / name
        raise FileNotFoundError(f"{cur} names {name!r}, which has no {MANIFEST}")
    raise FileNotFoundError(f"{p} is not a grounding index (no {CURRENT} or {MANIFEST}); build one with `gatehouse index build`")


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((resolve_version_dir(path) / MANIFEST).read_text(encoding="utf-8"))


class GroundingIndex:
    """Read-only: FAISS index + chunk table. Searches are thread-safe."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        chunks: list[dict[str, Any]],
        index: Any,
        vectors: np.ndarray | None,
        lexical: LexicalIndex | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.chunks = chunks
        self.index = index
        self.vectors = vectors  # memory-mapped; re-scores PQ candidates and BM25-only hits exactly
        self.lexical = lexical
        self.fusion: Fusion | None = Fusion(**manifest["fusion"]) if lexical is not None else None
        self.content_hash: str = manifest["content_hash"]
        self.index_type: str = manifest["index"]["type"]
        self.dimension: int = int(manifest["embedding"]["dimension"])
        self.version: str = manifest.get("version", directory.name)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"GroundingIndex({str(self.directory)!r}, type={self.index_type}, chunks={len(self)})"

    @classmethod
    def load(cls, path: str | Path, *, use_gpu: bool = False) -> GroundingIndex:
        import faiss

        d = resolve_version_dir(path)
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        with (d / "chunks.jsonl").open(encoding="utf-8") as f:
            chunks = [json.loads(line) for line in f if line.strip()]
        index: Any = faiss.read_index(str(d / "index.faiss"))
        if index.ntotal != len(chunks):
            raise ValueError(f"{d}: index holds {index.ntotal} vectors but chunks.jsonl has {len(chunks)} rows")
        params = manifest["index"].get("params", {})
        if manifest["index"]["type"] == "hnsw":
            index.hnsw.efSearch = int(params.get("ef_search", 64))
        elif manifest["index"]["type"] == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = int(params.get("nprobe", 16))
        if use_gpu:
            index = to_gpu(index)
        lexical = None
        if manifest.get("retrieval", "dense") == "hybrid":
            spec = manifest.get("lexical", {}).get("tokenizer", {})
            ours = tokenizer_spec()
            if spec.get("id") != TOKENIZER_ID or spec.get("han+kana") != ours["han+kana"]:
                raise ValueError(
                    f"{d}: its BM25 part was tokenised as {spec!r}, this gateway tokenises as {ours!r}; "
                    "rebuild the index with `gatehouse index build`"
                )
            lexical = LexicalIndex.load(d, len(chunks))
        vectors = None
        if (manifest["index"]["type"] == "ivfpq" or lexical is not None) and (d / "vectors.npy").is_file():
            vectors = np.load(d / "vectors.npy", mmap_mode="r")
        return cls(d, manifest, chunks, index, vectors, lexical)

    @property
    def retrieval(self) -> dict[str, Any]:
        """What the traffic record keeps about how passages were found."""
        if self.lexical is None or self.fusion is None:
            return {"mode": "dense"}
        return {"mode": "hybrid", "fusion": self.fusion.to_dict(), "bm25": self.manifest["lexical"]["params"]}

    def search(self, vec: np.ndarray, top_k: int = 5, min_score: float = 0.0, query_text: str | None = None) -> list[Hit]:
        """Best chunks, best first.

        Dense indexes (or no ``query_text``): by cosine similarity (vectors are unit
        length), ``min_score`` a cosine floor. Hybrid indexes: the top
        ``fusion.candidates`` of the dense and the BM25 rankings fused by RRF; a chunk
        is kept only if its cosine with the question is at least ``min_score`` (BM25
        reorders, it does not let in chunks the embedding finds unrelated), and
        ``Hit.score`` is the fused score.
        """
        q = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dimension:
            raise ValueError(f"query has dimension {q.shape[1]}, index {self.directory} has {self.dimension}")
        if top_k <= 0 or not self.chunks:
            return []
        if self.lexical is not None and self.fusion is not None and query_text:
            return self._hybrid(q, query_text, top_k, min_score)
        out = []
        for score, row in self._dense(q, top_k):
            if score < min_score:
                continue
            c = self.chunks[row]
            out.append(Hit(c["chunk_id"], c["doc_id"], c["title"], c["text"], round(float(score), 4)))
        return out

    def _hybrid(self, q: np.ndarray, query_text: str, top_k: int, min_score: float) -> list[Hit]:
        assert self.lexical is not None and self.fusion is not None and self.vectors is not None
        dense = self._dense(q, self.fusion.candidates)
        lexical = self.lexical.search(query_text, self.fusion.candidates)
        cosine = {row: s for s, row in dense}
        bm25 = {row: s for s, row in lexical}
        out = []
        for fused, row in self.fusion.fuse([r for _, r in dense], [r for _, r in lexical]):
            if row not in cosine:  # found by BM25 only: its cosine, exactly, from the stored vector
                cosine[row] = float(np.asarray(self.vectors[row], dtype=np.float32) @ q[0])
            if cosine[row] < min_score:
                continue
            c = self.chunks[row]
            b = bm25.get(row)
            out.append(Hit(c["chunk_id"], c["doc_id"], c["title"], c["text"], round(fused, 4),
                           round(cosine[row], 4), None if b is None else round(b, 4)))
            if len(out) == top_k:
                break
        return out

    def _dense(self, q: np.ndarray, top_k: int) -> list[tuple[float, int]]:
        """(cosine, row) of the nearest ``top_k`` chunks, best first."""
        k = min(top_k, len(self.chunks))
        if self.vectors is not None:
            # PQ scores are approximate: fetch more candidates, re-score exactly from the mmap
            scores, rows = self.index.search(q, min(len(self.chunks), k * 4))
            cand = [int(r) for r in rows[0] if r >= 0]
            exact = np.asarray(self.vectors[sorted(cand)], dtype=np.float32) @ q[0] if cand else np.zeros(0)
            pairs = sorted(zip(exact.tolist(), sorted(cand), strict=True), reverse=True)[:k]
        else:
            scores, rows = self.index.search(q, k)
            pairs = [(float(s), int(r)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]
        return pairs


class IndexHolder:
    """Keeps the live version of one index directory; ``current`` is swapped, never mutated."""

    def __init__(self, path: str | Path, *, poll_seconds: float = 1.0, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.poll_seconds = poll_seconds
        self.current: GroundingIndex = GroundingIndex.load(self.path)
        self.swaps = 0
        # called on the event loop after the poller swapped in a new version
        self.on_swap: list[Callable[[GroundingIndex], None]] = []
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def _live_hash(self) -> tuple[Path, str]:
        d = resolve_version_dir(self.path)
        if d == self.current.directory:
            return d, self.current.content_hash
        return d, json.loads((d / MANIFEST).read_text(encoding="utf-8"))["content_hash"]

    def refresh(self) -> bool:
        """Load and swap in the live version if its content hash changed; True if swapped."""
        with self._lock:
            d, h = self._live_hash()
            if h == self.current.content_hash:
                return False
            new = GroundingIndex.load(d)
            if new.dimension != self.current.dimension:
                raise ValueError(f"{d}: dimension changed {self.current.dimension} -> {new.dimension}; restart with a matching embedder")
            old, self.current = self.current, new  # one reference assignment: readers see old or new
            self.swaps += 1
            log.info("grounding index %s swapped %s -> %s (%d chunks)", self.name, old.version, new.version, len(new))
            return True

    async def arefresh(self) -> bool:
        return await asyncio.to_thread(self.refresh)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"grounding-poll-{self.name}")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                if await self.arefresh():
                    for cb in self.on_swap:
                        cb(self.current)
            except Exception as exc:  # a half-written or broken version must not kill the poller
                log.warning("grounding index %s: not swapping: %s", self.name, exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

"""Building grounding indexes: chunk, embed, pick a FAISS structure, write a version.

Index types (``--index-type``):

- ``flat``: ``IndexFlatIP``, exact inner product. ``auto`` uses it up to
  ``FLAT_MAX`` chunks, where an exact scan is still a few milliseconds.
- ``hnsw``: ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``: graph search,
  full vectors in memory, exact scores. ``auto`` above ``FLAT_MAX``.
- ``ivfpq``: ``IVF<nlist>,PQ<m>x<bits>`` with inner product; 48 bytes a vector
  instead of 1,536, for corpora that do not fit in memory as floats
  (``auto`` above ``HNSW_MAX``). Candidates are re-scored exactly from
  ``vectors.npy`` (memory-mapped) so ``min_score`` means the same everywhere.

Incremental ``add`` / ``delete`` work by doc id: only new or changed documents
are embedded (the expensive part); the FAISS structure is rebuilt from the
stored vectors of the kept chunks. HNSW cannot remove vectors and PQ codebooks
drift as documents change, so a rebuild from vectors is the one path that is
correct for every type, and at grounding sizes it takes seconds.

Retrieval (``--retrieval``): ``hybrid`` (default) also builds a BM25 index
(``gateway.grounding.lexical``) over the same rows into the same version
directory, with the fusion parameters in the manifest; ``dense`` is FAISS only.
BM25 has no incremental form worth the complexity at grounding sizes, so every
write (build, add, delete) re-tokenises all chunks and rebuilds it beside the
FAISS structure: both parts always describe the same rows.

Every write is a new version directory (temp dir + rename), then ``CURRENT``
is replaced atomically; the last ``KEEP_VERSIONS`` versions are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.grounding.index import CURRENT, MANIFEST, num_gpus, resolve_version_dir, to_gpu
from gateway.grounding.lexical import Fusion, LexicalIndex, bm25_params, tokenizer_spec
from gateway.grounding.text import Chunk, Document, chunk_document

FORMAT = "gatehouse-grounding/2"  # /2: optional BM25 part and fusion; /1 versions load as dense-only
RETRIEVAL_MODES = ("hybrid", "dense")
FLAT_MAX = 20_000
HNSW_MAX = 2_000_000
KEEP_VERSIONS = 3
INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")


def choose_index_type(n: int, requested: str = "auto") -> str:
    if requested not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, got {requested!r}")
    if requested != "auto":
        return requested
    if n <= FLAT_MAX:
        return "flat"
    return "hnsw" if n <= HNSW_MAX else "ivfpq"


def default_params(index_type: str, n: int, dim: int) -> dict[str, Any]:
    if index_type == "hnsw":
        return {"m": 32, "ef_construction": 80, "ef_search": 64}
    if index_type == "ivfpq":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))
        m = next(m for m in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % m == 0)
        bits = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(max(n, 2))) - 1))
        return {"nlist": nlist, "pq_m": m, "pq_bits": bits, "nprobe": min(16, nlist), "train_size": min(n, 100_000)}
    return {}


def build_faiss(vectors: np.ndarray, index_type: str, params: dict[str, Any] | None = None, *, use_gpu: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """A FAISS index over unit ``vectors`` (rows = ids 0..n-1); returns it with the params used."""
    import faiss

    n, dim = vectors.shape
    params = {**default_params(index_type, n, dim), **(params or {})}
    gpu = num_gpus() > 0 if use_gpu is None else use_gpu
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index: Any
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["ef_construction"])
        index.hnsw.efSearch = int(params["ef_search"])
        if n:
            index.add(x)
    elif index_type == "ivfpq":
        if n < 2:
            raise ValueError("ivfpq needs at least 2 vectors; use --index-type flat")
        index = faiss.index_factory(dim, f"IVF{params['nlist']},PQ{params['pq_m']}x{params['pq_bits']}np", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = x if n <= params["train_size"] else x[rng.choice(n, params["train_size"], replace=False)]
        if gpu:  # k-means is where a GPU pays off; the trained index comes back to CPU for saving
            gi = to_gpu(index)
            gi.train(sample)
            gi.add(x)
            index = faiss.index_gpu_to_cpu(gi)
        else:
            index.train(sample)
            index.add(x)
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    else:
        raise ValueError(f"unknown index type {index_type!r}")
    return index, {**params, "gpu_built": bool(gpu and index_type == "ivfpq")}


def embed_texts(embedder: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    if not texts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    from tqdm import tqdm

    out = []
    show = progress and len(texts) > 4 * batch_size
    with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not show, file=sys.stderr) as bar:
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            out.append(embedder.encode(batch, batch_size=batch_size))
            bar.update(len(batch))
    return np.concatenate(out).astype(np.float32)


def embedding_text(c: Chunk | dict[str, Any]) -> str:
    """What gets embedded: the title gives a short chunk its topic."""
    title, text = (c.title, c.text) if isinstance(c, Chunk) else (c["title"], c["text"])
    return f"{title}\n{text}" if title and not text.startswith(title) else text


def _content_hash(fingerprint: str, index_type: str, chunking: dict[str, Any], rows: list[dict[str, Any]],
                  retrieval: dict[str, Any] | None = None) -> str:
    h = hashlib.sha256()
    head: dict[str, Any] = {"fp": fingerprint, "type": index_type, "chunking": chunking}
    if retrieval is not None:  # dense-only hashes stay what they were before hybrid retrieval
        head["retrieval"] = retrieval
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in rows:
        h.update(b"\0" + r["chunk_id"].encode() + b"\0" + r["title"].encode() + b"\0" + r["text"].encode())
    return h.hexdigest()


def write_version(
    index_dir: str | Path,
    rows: list[dict[str, Any]],
    docs: list[dict[str, Any]],
    vectors: np.ndarray,
    *,
    embedding: dict[str, Any],
    index_type: str,
    params: dict[str, Any] | None,
    chunking: dict[str, Any],
    retrieval: str = "hybrid",
    fusion: Fusion | None = None,
) -> dict[str, Any]:
    """Build FAISS (and BM25 for hybrid) over the rows and write a complete version, then point CURRENT at it."""
    import faiss

    if retrieval not in RETRIEVAL_MODES:
        raise ValueError(f"retrieval must be one of {', '.join(RETRIEVAL_MODES)}, got {retrieval!r}")
    root = Path(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    resolved = choose_index_type(len(rows), index_type)
    if resolved == "ivfpq" and len(rows) < 2:
        resolved = "flat"
    index, used = build_faiss(vectors, resolved, params)
    lexical: LexicalIndex | None = None
    hybrid: dict[str, Any] = {}
    if retrieval == "hybrid":
        fusion = fusion or Fusion()
        lexical = LexicalIndex.build([embedding_text(r) for r in rows])
        hybrid = {
            "lexical": {"type": "bm25s", "tokenizer": tokenizer_spec(), "params": bm25_params(lexical), "text": "title + newline + chunk text"},
            "fusion": fusion.to_dict(),
        }
    content_hash = _content_hash(embedding["fingerprint"], resolved, chunking, rows,
                                 {"mode": retrieval, **hybrid} if lexical is not None else None)
    now = datetime.now(UTC)
    version = f"v-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{content_hash[:8]}"
    manifest = {
        "format": FORMAT,
        "version": version,
        "created_at": now.isoformat(),
        "content_hash": content_hash,
        "embedding": {**embedding, "normalized": True, "text": "title + newline + chunk text"},
        "index": {"type": resolved, "requested": index_type, "metric": "inner_product", "params": used, "ntotal": int(index.ntotal)},
        "retrieval": retrieval,
        **hybrid,
        "chunking": chunking,
        "chunk_count": len(rows),
        "docs": docs,
    }
    tmp = root / f".tmp-{version}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        with (tmp / "chunks.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        faiss.write_index(index, str(tmp / "index.faiss"))
        if lexical is not None:
            lexical.save(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        os.rename(tmp, root / version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cur_tmp = root / f".{CURRENT}.{uuid.uuid4().hex[:6]}"
    cur_tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(cur_tmp, root / CURRENT)
    _prune(root, version)
    return manifest


def _prune(root: Path, live: str) -> None:
    versions = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("v-"))
    for old in versions[:-KEEP_VERSIONS]:
        if old.name != live:
            shutil.rmtree(old, ignore_errors=True)


def _embedding_info(embedder: Any) -> dict[str, Any]:
    return {"model_id": embedder.model_id, "model_dir": str(embedder.model_dir), "fingerprint": embedder.fingerprint,
            "runtime": embedder.runtime, "dimension": int(embedder.dimension)}


def _rows_and_docs(documents: list[Document], max_chars: int, overlap: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    for d in documents:
        chunks = chunk_document(d, max_chars=max_chars, overlap=overlap)
        docs.append({"doc_id": d.doc_id, "title": d.title, "sha256": d.sha256, "chars": len(d.text), "chunks": [[c.chunk_id, c.start, c.end] for c in chunks]})
        for c in chunks:
            rows.append({"chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "text": c.text, "start": c.start, "end": c.end})
    return rows, docs


def build_index(
    documents: list[Document],
    index_dir: str | Path,
    embedder: Any,
    *,
    index_type: str = "auto",
    params: dict[str, Any] | None = None,
    max_chars: int = 800,
    overlap: int = 1,
    progress: bool = True,
    retrieval: str = "hybrid",
    fusion: Fusion | None = None,
) -> dict[str, Any]:
    """Chunk, embed and index ``documents`` into a new version of ``index_dir``."""
    if not documents:
        raise ValueError("no documents to index (looked for .txt, .md, .html)")
    choose_index_type(0, index_type)  # validate early
    rows, docs = _rows_and_docs(documents, max_chars, overlap)
    vectors = embed_texts(embedder, [embedding_text(r) for r in rows], progress=progress)
    return write_version(
        index_dir, rows, docs, vectors, embedding=_embedding_info(embedder), index_type=index_type, params=params,
        chunking={"max_chars": max_chars, "overlap": overlap}, retrieval=retrieval, fusion=fusion,
    )


def _load_parts(index_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    d = resolve_version_dir(index_dir)
    manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    with (d / "chunks.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    vectors = np.load(d / "vectors.npy")
    return manifest, rows, vectors


def _retrieval_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """An update keeps the version's retrieval mode and fusion parameters."""
    mode = manifest.get("retrieval", "dense")
    return {"retrieval": mode, "fusion": Fusion(**manifest["fusion"]) if mode == "hybrid" else None}


def _check_model(manifest: dict[str, Any], info: dict[str, Any]) -> None:
    if manifest["embedding"]["fingerprint"] != info["fingerprint"]:
        raise ValueError(
            f"this index was built with {manifest['embedding']['model_id']} (fingerprint "
            f"{manifest['embedding']['fingerprint'][:12]}, runtime {manifest['embedding'].get('runtime', 'torch')}); "
            f"the embedder given is {info['model_id']} ({info['fingerprint'][:12]}, runtime {info['runtime']}). "
            "Rebuild with `gatehouse index build`, or pass the same --model and --runtime"
        )


def add_documents(index_dir: str | Path, documents: list[Document], embedder: Any, *, progress: bool = True) -> dict[str, Any]:
    """Add or replace documents by doc id; only they are embedded."""
    manifest, rows, vectors = _load_parts(index_dir)
    info = _embedding_info(embedder)
    _check_model(manifest, info)
    ch = manifest["chunking"]
    replace = {d.doc_id for d in documents}
    keep = [i for i, r in enumerate(rows) if r["doc_id"] not in replace]
    new_rows, new_docs = _rows_and_docs(documents, ch["max_chars"], ch["overlap"])
    new_vecs = embed_texts(embedder, [embedding_text(r) for r in new_rows], progress=progress)
    all_rows = [rows[i] for i in keep] + new_rows
    all_vecs = np.concatenate([vectors[keep], new_vecs]) if keep else new_vecs
    docs = sorted([d for d in manifest["docs"] if d["doc_id"] not in replace] + new_docs, key=lambda d: d["doc_id"])
    return write_version(
        index_dir, all_rows, docs, all_vecs, embedding=info,
        index_type=manifest["index"].get("requested", manifest["index"]["type"]), params=None, chunking=ch,
        **_retrieval_of(manifest),
    )


def delete_documents(index_dir: str | Path, doc_ids: Sequence[str]) -> dict[str, Any]:
    """Drop documents by id and rebuild the FAISS structure from the kept vectors (no embedding)."""
    manifest, rows, vectors = _load_parts(index_dir)
    known = {d["doc_id"] for d in manifest["docs"]}
    unknown = sorted(set(doc_ids) - known)
    if unknown:
        raise KeyError(f"unknown doc id(s): {', '.join(unknown)}; `gatehouse index query` or manifest.json lists them")
    gone = set(doc_ids)
    keep = [i for i, r in enumerate(rows) if r["doc_id"] not in gone]
    if not keep:
        raise ValueError("deleting these would leave the index empty; build a new one instead")
    return write_version(
        index_dir, [rows[i] for i in keep], [d for d in manifest["docs"] if d["doc_id"] not in gone], vectors[keep],
        embedding=manifest["embedding"], index_type=manifest["index"].get("requested", manifest["index"]["type"]),
        params=None, chunking=manifest["chunking"], **_retrieval_of(manifest),
    )


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t

"""Retrieval and embedding benchmark for grounding (not part of the test run).

    OMP_WAIT_POLICY=PASSIVE python tests/bench/bench_retrieval.py [--sizes 10000 1000000] [--out bench.json]

Synthetic unit vectors (dim 384, a mixture of 2,000 Gaussian clusters, so
graph and IVF indexes see structure as with real embeddings) for flat, HNSW
and IVF-PQ at each size: build time, single-query latency p50/p99, batched QPS
and recall@10 against exact search. Then MiniLM embedding throughput by batch
size. Results print as they come and are written to --out as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on a shared 2-core box

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.grounding.builder import build_faiss

DIM = 384


def synthetic(n: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        out[i : i + m] = centers[rng.integers(0, clusters, m)] + 0.6 * rng.standard_normal((m, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def queries(x: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.integers(0, len(x), n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM) * 4
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def bench_index(kind: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray | None, params: dict, n_single: int) -> dict:
    t = time.perf_counter()
    index, used = build_faiss(x, kind, params, use_gpu=False)
    build_s = time.perf_counter() - t
    if kind == "hnsw":
        index.hnsw.efSearch = used["ef_search"]
    lat = []
    for i in range(n_single):
        t = time.perf_counter()
        index.search(q[i : i + 1], 10)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, got = index.search(q, 10)
    batch_s = time.perf_counter() - t
    recall = None
    if truth is not None:
        recall = float(np.mean([len(set(g) & set(tr)) / 10 for g, tr in zip(got, truth, strict=True)]))
    rerank = None
    if kind == "ivfpq" and truth is not None:
        # what GroundingIndex.search does for PQ: 4x candidates, exact re-score from the stored vectors
        _, cand = index.search(q, 40)
        rr = [c[np.argsort(-(x[c[c >= 0]] @ qv))[:10]] if (c >= 0).all() else c[:10] for c, qv in zip(cand, q, strict=True)]
        rerank = round(float(np.mean([len(set(g) & set(tr)) / 10 for g, tr in zip(rr, truth, strict=True)])), 3)
    lat_ms = np.array(lat) * 1000
    return {
        "type": kind,
        "n": len(x),
        "params": {k: v for k, v in used.items() if k != "gpu_built"},
        "build_s": round(build_s, 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        "qps_single": round(n_single / float(np.sum(lat_ms) / 1000), 1),
        "qps_batch": round(len(q) / batch_s, 1),
        "recall_at_10": None if recall is None else round(recall, 3),
        "recall_at_10_reranked": rerank,
    }


def bench_embedding(sizes: list[int]) -> list[dict]:
    from evaluators.embedding import Embedder

    emb = Embedder(cache_size=0)
    base = Path(__file__).resolve().parents[1] / "fixtures" / "grounding_docs"
    # user-turn sized texts (8-30 words): padding to the longest text in a batch would otherwise dominate
    words = " ".join(p.read_text() for p in sorted(base.iterdir()) if p.suffix in (".txt", ".md")).split()
    sents = [" ".join(words[i : i + 8 + (i % 23)]) for i in range(0, len(words) - 31, 17)]
    emb.encode(sents[:8])  # warm-up
    out = []
    for b in sizes:
        total = max(64, b * 8)
        texts = [f"{sents[i % len(sents)]} ({i})" for i in range(total)]  # distinct, so nothing is cached
        t = time.perf_counter()
        for i in range(0, total, b):
            emb.encode(texts[i : i + b], batch_size=b)
        s = time.perf_counter() - t
        out.append({"batch": b, "texts": total, "texts_per_s": round(total / s, 1), "ms_per_batch": round(s / (total / b) * 1000, 2)})
        print(json.dumps({"embedding": out[-1]}), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--types", nargs="+", default=["flat", "ivfpq", "hnsw"])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--out", default="bench_retrieval.json")
    args = ap.parse_args()
    import faiss

    results: dict = {"cpu": os.cpu_count(), "faiss": faiss.__version__, "omp_threads": faiss.omp_get_max_threads(), "retrieval": [], "embedding": []}
    if not args.skip_embedding:
        results["embedding"] = bench_embedding(args.batches)
    for n in args.sizes:
        t = time.perf_counter()
        x = synthetic(n)
        q = queries(x, args.queries)
        big = n >= 500_000
        flat, _ = build_faiss(x, "flat", use_gpu=False)
        _, truth = flat.search(q[:200] if big else q, 10)
        del flat
        print(json.dumps({"n": n, "data_s": round(time.perf_counter() - t, 1)}), flush=True)
        for kind in args.types:
            params = {}
            if kind == "hnsw" and big:
                params = {"m": 16, "ef_construction": 40, "ef_search": 64}
            if kind == "ivfpq":
                params = {"nlist": 1024 if big else 100, "nprobe": 16, "train_size": 50_000 if big else n}
            qq = q[:200] if big else q
            r = bench_index(kind, x, qq, truth, params, n_single=50 if (big and kind == "flat") else min(len(qq), 500))
            results["retrieval"].append(r)
            print(json.dumps(r), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

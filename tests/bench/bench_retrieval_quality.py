"""Retrieval quality and cost: dense vs BM25 vs hybrid, English and Japanese (not part of the test run).

    python tests/bench/bench_retrieval_quality.py [--data tests/fixtures/grounding_heldout] [--runtime onnx-int8]

For each language folder under --data (``pages/`` + ``questions.jsonl``; see its
SOURCE.md): build one hybrid index with ``gateway.grounding.builder`` (the same
code as ``gatehouse index build``), then for every question rank the chunks
three ways through ``GroundingIndex``: dense only (FAISS cosine), BM25 only, and
hybrid (RRF of both, the gateway's default). Prints recall@1/3/5 by page, per
question kind (code / number / name / concept), how many right pages the
default ``min_score`` 0.25 cosine gate would drop, and the added latency per
retrieval (embedding excluded; it is shared with safety and timed separately).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evaluators.embedding import shared_embedder
from gateway.grounding.builder import build_index
from gateway.grounding.index import GroundingIndex
from gateway.grounding.lexical import Fusion
from gateway.grounding.text import iter_documents

KS = (1, 3, 5)
MODES = ("dense", "bm25", "hybrid")


def first_docs(rows: list[int], index: GroundingIndex, k: int) -> list[str]:
    out: list[str] = []
    for r in rows:
        d = index.chunks[r]["doc_id"]
        if d not in out:
            out.append(d)
        if len(out) == k:
            break
    return out


def rankings(index: GroundingIndex, vec: np.ndarray, question: str, times: dict[str, list[float]]) -> dict[str, list[str]]:
    assert index.lexical is not None
    row_of = {c["chunk_id"]: i for i, c in enumerate(index.chunks)}
    t = time.perf_counter()
    dense = index.search(vec, 20, -1.0)
    times["dense"].append(time.perf_counter() - t)
    t = time.perf_counter()
    bm25 = index.lexical.search(question, 20)
    times["bm25"].append(time.perf_counter() - t)
    t = time.perf_counter()
    hybrid = index.search(vec, 20, -1.0, question)
    times["hybrid"].append(time.perf_counter() - t)
    return {
        "dense": first_docs([row_of[h.chunk_id] for h in dense], index, 5),
        "bm25": first_docs([r for _, r in bm25], index, 5),
        "hybrid": first_docs([row_of[h.chunk_id] for h in hybrid], index, 5),
        "hybrid_gated": [h.doc_id for h in index.search(vec, 5, 0.25, question)],
    }


def evaluate(folder: Path, embedder: object, fusion: Fusion) -> dict[str, object]:
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = iter_documents([folder / "pages"])
    with tempfile.TemporaryDirectory(prefix="retrieval-quality-") as tmp:
        build_index(docs, Path(tmp) / "index", embedder, progress=False, fusion=fusion)
        index = GroundingIndex.load(Path(tmp) / "index")
        times: dict[str, list[float]] = defaultdict(list)
        hits: dict[str, dict[int, list[int]]] = {m: {k: [] for k in KS} for m in (*MODES, "hybrid_gated")}
        by_kind: dict[tuple[str, str], list[int]] = defaultdict(list)
        embed_s = []
        for q in questions:
            t = time.perf_counter()
            vec = embedder.encode([q["q"]])[0]  # type: ignore[attr-defined]
            embed_s.append(time.perf_counter() - t)
            ranked = rankings(index, vec, q["q"], times)
            for mode, docs_ in ranked.items():
                for k in KS:
                    hits[mode][k].append(int(q["doc"] in docs_[:k]))
                if mode in MODES:
                    by_kind[(mode, q["kind"])].append(int(q["doc"] in docs_[:1]))
        # a second pass for latency, with every vector cached: search cost only
        lat: dict[str, list[float]] = defaultdict(list)
        vecs = embedder.encode([q["q"] for q in questions])  # type: ignore[attr-defined]
        for _ in range(5):
            for q, v in zip(questions, vecs, strict=True):
                rankings(index, v, q["q"], lat)
    return {
        "questions": len(questions),
        "pages": len(docs),
        "chunks": len(index.chunks),
        "fusion": index.retrieval,
        "recall": {m: {k: float(np.mean(v)) for k, v in ks.items()} for m, ks in hits.items()},
        "recall1_by_kind": {f"{m}/{kind}": (float(np.mean(v)), len(v)) for (m, kind), v in sorted(by_kind.items())},
        "latency_ms": {m: {"p50": 1000 * float(np.percentile(v, 50)), "p99": 1000 * float(np.percentile(v, 99))} for m, v in lat.items()},
        "embed_ms_p50": 1000 * float(np.percentile(embed_s, 50)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "fixtures" / "grounding_heldout",
                    help="folder of language folders, each with pages/ and questions.jsonl")
    ap.add_argument("--runtime", default=None, help="embedding runtime (default: the gateway default, onnx-int8)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--rrf-k", type=int, default=60)
    ap.add_argument("--dense-weight", type=float, default=1.0)
    ap.add_argument("--bm25-weight", type=float, default=1.0)
    args = ap.parse_args(argv)
    embedder = shared_embedder(None, args.runtime)
    results = {}
    for folder in sorted(p for p in args.data.iterdir() if (p / "questions.jsonl").is_file()):
        res = evaluate(folder, embedder, Fusion(k=args.rrf_k, dense_weight=args.dense_weight, bm25_weight=args.bm25_weight))
        results[folder.name] = res
        print(f"\n== {folder.name}: {res['questions']} questions, {res['pages']} pages, {res['chunks']} chunks; {json.dumps(res['fusion'])}")
        print("mode            recall@1  recall@3  recall@5")
        for mode, ks in res["recall"].items():  # type: ignore[union-attr]
            print(f"{mode:15s} {ks[1]:8.3f}  {ks[3]:8.3f}  {ks[5]:8.3f}")
        print("recall@1 by question kind: " + ", ".join(f"{k} {v[0]:.2f} (n={v[1]})" for k, v in res["recall1_by_kind"].items()))  # type: ignore[union-attr]
        print("search latency (embedding excluded): " + ", ".join(
            f"{m} p50 {v['p50']:.2f} ms p99 {v['p99']:.2f} ms" for m, v in res["latency_ms"].items()) + f"; embedding p50 {res['embed_ms_p50']:.1f} ms")  # type: ignore[union-attr]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

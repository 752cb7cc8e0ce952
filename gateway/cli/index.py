"""gatehouse index: build, update and query grounding indexes.

    gatehouse index build DOCS_DIR -o INDEX_DIR [--index-type auto|flat|hnsw|ivfpq] [--model DIR] [--runtime R]
    gatehouse index add INDEX_DIR DOCS...            add or replace documents (by doc id)
    gatehouse index delete INDEX_DIR --doc ID [--doc ID ...]
    gatehouse index query INDEX_DIR "question" [-k 5] [--min-score 0]
    gatehouse index info INDEX_DIR

``--runtime`` (onnx-int8, onnx, torch) must match the gateway's ``embedding.runtime``;
``add`` and ``query`` default to the runtime the index was built with.

A doc id is the file's path relative to the directory it was found under
(``add`` of a single file: its name), e.g. ``faq/billing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# before faiss loads OpenMP: spinning worker threads collapse k-means on a busy box
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from evaluators.embedding import RUNTIMES
from gateway.grounding.builder import INDEX_TYPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse index", description="Build and query grounding indexes.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a new index version from a directory of .txt/.md/.html")
    b.add_argument("docs_dir")
    b.add_argument("-o", "--output", required=True, help="index directory (created; a new version if it exists)")
    b.add_argument("--index-type", choices=INDEX_TYPES, default="auto")
    b.add_argument("--model", help="sentence-transformers model directory (default: bundled MiniLM)")
    b.add_argument("--runtime", choices=RUNTIMES, default="onnx-int8",
                   help="embedding runtime; must match the gateway's embedding.runtime (default: %(default)s)")
    b.add_argument("--max-chars", type=int, default=800, help="chunk size in characters (default: %(default)s)")
    b.add_argument("--overlap", type=int, default=1, help="sentences shared by consecutive chunks (default: %(default)s)")
    b.add_argument("--retrieval", choices=("hybrid", "dense"), default="hybrid",
                   help="hybrid: BM25 beside FAISS, fused by RRF (default); dense: FAISS only")
    b.add_argument("--rrf-k", type=int, default=60, help="RRF constant k (default: %(default)s)")
    b.add_argument("--dense-weight", type=float, default=1.0, help="weight of the dense ranking in the fusion")
    b.add_argument("--bm25-weight", type=float, default=1.0, help="weight of the BM25 ranking in the fusion")
    b.add_argument("--no-progress", action="store_true")
    a = sub.add_parser("add", help="add or replace documents in an index")
    a.add_argument("index_dir")
    a.add_argument("docs", nargs="+")
    a.add_argument("--model")
    a.add_argument("--runtime", choices=RUNTIMES, help="default: the runtime the index was built with")
    a.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("delete", help="remove documents by doc id")
    d.add_argument("index_dir")
    d.add_argument("--doc", action="append", required=True, metavar="ID")
    q = sub.add_parser("query", help="search an index")
    q.add_argument("index_dir")
    q.add_argument("question")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--min-score", type=float, default=0.0)
    q.add_argument("--model")
    q.add_argument("--runtime", choices=RUNTIMES, help="default: the runtime the index was built with")
    q.add_argument("--json", action="store_true")
    i = sub.add_parser("info", help="print an index's manifest summary")
    i.add_argument("index_dir")
    return p


def _embedder(model: str | None, runtime: str | None, index_dir: str | None = None):
    from evaluators.embedding import shared_embedder

    if runtime is None and index_dir is not None:
        from gateway.grounding.index import read_manifest

        runtime = read_manifest(index_dir)["embedding"].get("runtime", "torch")  # built before runtimes existed
    return shared_embedder(model, runtime)  # type: ignore[arg-type]


def _summary(m: dict) -> str:
    mode = m.get("retrieval", "dense")
    if mode == "hybrid":
        f = m["fusion"]
        mode = f"hybrid: bm25 + dense, {f['method']} k={f['k']} weights {f['dense_weight']}/{f['bm25_weight']}"
    return (
        f"{m['version']}: {len(m['docs'])} docs, {m['chunk_count']} chunks, {mode}, {m['index']['type']} "
        f"(dim {m['embedding']['dimension']}, {m['embedding']['model_id']}, {m['embedding'].get('runtime', 'torch')}), hash {m['content_hash'][:12]}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gateway.grounding import builder
    from gateway.grounding.index import GroundingIndex, read_manifest
    from gateway.grounding.text import iter_documents

    try:
        if args.cmd == "build":
            docs = iter_documents([args.docs_dir])
            embedder = _embedder(args.model, args.runtime)
            t = time.perf_counter()
            from gateway.grounding.lexical import Fusion

            m = builder.build_index(
                docs, args.output, embedder, index_type=args.index_type,
                max_chars=args.max_chars, overlap=args.overlap, progress=not args.no_progress,
                retrieval=args.retrieval, fusion=Fusion(k=args.rrf_k, dense_weight=args.dense_weight, bm25_weight=args.bm25_weight),
            )
            print(f"built {_summary(m)} in {time.perf_counter() - t:.1f}s -> {args.output}")
        elif args.cmd == "add":
            m = builder.add_documents(args.index_dir, iter_documents(args.docs), _embedder(args.model, args.runtime, args.index_dir),
                                      progress=not args.no_progress)
            print(f"updated {_summary(m)}")
        elif args.cmd == "delete":
            m = builder.delete_documents(args.index_dir, args.doc)
            print(f"updated {_summary(m)}")
        elif args.cmd == "query":
            index = GroundingIndex.load(args.index_dir)
            vec = _embedder(args.model, args.runtime, args.index_dir).encode([args.question])[0]
            hits = index.search(vec, args.k, args.min_score, args.question)
            if args.json:
                print(json.dumps([{"chunk_id": h.chunk_id, "doc_id": h.doc_id, "title": h.title, "score": h.score,
                                   "dense_score": h.dense_score, "bm25_score": h.bm25_score, "text": h.text} for h in hits],
                                 indent=1, ensure_ascii=False))
            for n, h in enumerate(hits, 1):
                if not args.json:
                    snippet = " ".join(h.text.split())[:160]
                    parts = "" if h.dense_score is None else f" (cosine {h.dense_score:.3f}, bm25 {h.bm25_score if h.bm25_score is not None else '-'})"
                    print(f"[{n}] {h.score:.3f}{parts}  {h.chunk_id}  ({h.title})\n    {snippet}")
            if not hits and not args.json:
                print("no passages above --min-score")
        elif args.cmd == "info":
            print(_summary(read_manifest(args.index_dir)))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Embedding runtimes: CPU cost per text and fidelity to PyTorch.

A script, not a test. Builds one ``Embedder`` per runtime (torch, onnx fp32, onnx int8)
on the bundled MiniLM in this process, pinned to ``--threads`` intra-op threads (the
gateway's ``server.model_threads``, default 1), then times ``encode`` on a short prompt,
a ~75-token reply and a batch of 16 mixed texts (best of ``--repeat`` timings of
``--iters`` calls each, so a busy neighbour inflates less), and prints the cosine of
each runtime's vectors to torch's on a fixed set of texts.

    python tests/bench/bench_embedding.py
    python tests/bench/bench_embedding.py --threads 2 --out embedding.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

SHORT = "Can you give me a few practical tips about sourdough bread? Thanks a lot! (request 12)"
LONG = (
    "Thanks for question 123. Here is a short overview of the topic you asked about today. "
    "The main idea is to split the work into small steps you can check. Start by writing down "
    "what you already know and what you still need. A simple checklist helps keep track of "
    "progress over the coming week. Most people find it easier to begin with the smallest useful piece."
)
FIDELITY = [
    "hello",
    "What are common mistakes people make with unit testing?",
    "I hate all of them, they are vermin and should be wiped out.",
    "The museum opens at nine and offers free guided tours on weekends.",
    LONG,
    "Alice was beginning to get very tired of sitting by her sister on the bank. " * 3,
]


def best_ms(fn: Any, iters: int, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t) / iters * 1000)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from evaluators.embedding import RUNTIMES, Embedder

    torch.set_num_threads(args.threads)
    mixed = [f"{SHORT} {i}" if i % 2 else f"{LONG} {i}" for i in range(16)]
    rows: dict[str, dict[str, float]] = {}
    vectors: dict[str, Any] = {}
    embedders: dict[str, Embedder] = {}
    for rt in RUNTIMES:
        e = embedders[rt] = Embedder(runtime=rt, threads=args.threads, cache_size=0)
        vectors[rt] = e.encode(FIDELITY)
        rows[rt] = {
            "short_ms": best_ms(lambda e=e: e.encode([SHORT]), args.iters, args.repeat),
            "long_ms": best_ms(lambda e=e: e.encode([LONG]), args.iters, args.repeat),
            "mixed16_ms": best_ms(lambda e=e: e.encode(mixed), max(args.iters // 6, 3), args.repeat),
        }
    tok = embedders["torch"].tokenizer
    n_short, n_long = len(tok(SHORT)["input_ids"]), len(tok(LONG)["input_ids"])
    base = rows["torch"]
    print(f"threads {args.threads}; short = {n_short} tokens, long = {n_long} tokens; best of {args.repeat}\n")
    print("| runtime | short prompt (ms) | long reply (ms) | 16 mixed texts (ms) | vs torch (mixed) | cosine to torch, min / mean |")
    print("|---|---:|---:|---:|---:|---:|")
    for rt, r in rows.items():
        cos = (vectors[rt] * vectors["torch"]).sum(1)
        r["cos_min"], r["cos_mean"] = float(cos.min()), float(cos.mean())
        print(f"| {rt} | {r['short_ms']:.2f} | {r['long_ms']:.2f} | {r['mixed16_ms']:.1f} | "
              f"{base['mixed16_ms'] / r['mixed16_ms']:.1f}x | {r['cos_min']:.4f} / {r['cos_mean']:.4f} |")
    if args.out:
        doc = {"threads": args.threads, "tokens": {"short": n_short, "long": n_long}, "rows": rows,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
               "numpy": np.__version__, "torch": torch.__version__}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

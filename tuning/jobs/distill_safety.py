"""Distil a slow safety scorer into the fast MiniLM-head scorer the gateway runs inline.

Teacher (the slower, stronger scorer): MiniLM-L6 fine-tuned (its top
``train_top_layers`` layers, pooler and classifier) as a two-label sequence classifier (``toxicity``, ``identity_attack``) on the
labelled train split of ``evaluators.safety.datasets.load_splits`` (HateCheck
template groups + Conversation AI identity templates). It needs its own
transformer forward pass per text, where the inline scorer reuses the one
MiniLM embedding the gateway already computes for grounding and safety. A real
Detoxify checkpoint cannot be downloaded here; with one, pass any scorer with
the same ``score(texts) -> (n, 2)`` shape as the teacher.

Student: ``evaluators.safety.head.Head`` (MLP 384 -> hidden -> 2, .npz) on the
frozen MiniLM sentence embeddings, fitted to the teacher's probabilities (soft
binary cross-entropy), on a transfer set of texts the teacher scored: the
train + validation texts plus any logged traffic texts (``--traffic``); no gold
label is used for the student.

Agreement is measured on held-out texts neither saw (the template-disjoint
test splits): Pearson and Spearman of the scores and agreement of the 0.5
decisions, per label. The output directory holds ``teacher/`` (HF model),
``student/minilm_head.npz`` + ``MANIFEST.json`` (drop-in ``safety.head``), and
``report.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuning.jobs.common import seed_everything

LABELS = ("toxicity", "identity_attack")


class TransformerTeacher:
    """A fine-tuned sequence classifier scoring ``LABELS`` (sigmoid per label)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_length: int = 128) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
        self.device = device
        self.max_length = max_length

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            b = self.tok(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            out.append(torch.sigmoid(self.model(**b).logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)


TEACHER_RECORD = "gatehouse_teacher.json"


def train_teacher(
    texts: Sequence[str],
    labels: np.ndarray,  # (n, 2) with -1 where a row has no label
    out_dir: Path,
    *,
    base_model: str | Path,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 4e-5,
    max_length: int = 64,
    seed: int = 0,
    device: str = "cpu",
    train_top_layers: int = 2,
) -> Path:
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seed_everything(seed)
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)},
        problem_type="multi_label_classification",
    ).to(device)
    # CPU budget: train the top transformer layers, pooler and classifier; freeze the rest
    layers = model.base_model.encoder.layer
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(("bert.embeddings",)) and not any(
            name.startswith(f"bert.encoder.layer.{i}.") for i in range(len(layers) - train_top_layers)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    n = len(texts)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    y = torch.tensor(labels, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    model.train()
    bar = tqdm(total=steps, desc="teacher", unit="step")
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            logits = model(**b).logits
            t = y[idx].to(device)
            mask = (t >= 0).float()
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, t.clamp(min=0), reduction="none") * mask).sum() / mask.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # how it was trained, so a later run that reuses it (--teacher) reports the truth
    (out_dir / TEACHER_RECORD).write_text(json.dumps({
        "trained_on_rows": n, "epochs": epochs, "trained_layers": f"top {train_top_layers} of {len(layers)} + pooler + classifier",
        "batch_size": batch_size, "lr": lr, "max_length": max_length, "seed": seed,
    }, indent=2) + "\n")
    tok.save_pretrained(out_dir)
    return out_dir


def train_student_head(
    emb: np.ndarray,
    targets: np.ndarray,  # (n, 2) teacher probabilities
    *,
    hidden: int = 64,
    epochs: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-batch Adam on soft BCE; returns (W, b) layers for ``Head.from_layers``."""
    seed_everything(seed)
    x = torch.tensor(emb, dtype=torch.float32)
    t = torch.tensor(targets, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, t.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), t)
        loss.backward()
        opt.step()
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in lin]


def agreement(student: np.ndarray, teacher: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    const = s.std() == 0 or t.std() == 0
    return {
        "n": len(s),
        "pearson": float("nan") if const else float(pearsonr(s, t)[0]),
        "spearman": float("nan") if const else float(spearmanr(s, t)[0]),
        "agreement_at_0.5": float(np.mean((s >= threshold) == (t >= threshold))),
        "mean_abs_diff": float(np.mean(np.abs(s - t))),
    }


def gold_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    m = y >= 0
    if m.sum() == 0:
        return {}
    yy, pp = y[m], p[m]
    out = {"n": int(m.sum()), "accuracy_at_0.5": float(np.mean((pp >= 0.5) == (yy == 1)))}
    if len(set(yy.tolist())) == 2:
        out["auc"] = float(roc_auc_score(yy, pp))
    return out


def _labels(rows: Sequence[Any]) -> np.ndarray:
    return np.array([[r.labels.get(k, -1) for k in LABELS] for r in rows], dtype=np.float32)


def run(
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    traffic: Sequence[str] = (),
    teacher_dir: str | Path | None = None,
    teacher_epochs: int = 2,
    name_adj_train: int = 2000,
    heldout_cap: int = 600,
    train_top_layers: int = 2,
    seed: int = 0,
    registry: Any = None,
) -> dict[str, Any]:
    """Train (or load) the teacher, distil the student head, measure agreement; returns the report."""
    from evaluators.embedding import Embedder, model_fingerprint
    from evaluators.safety.datasets import load_splits, rows_sha256
    from evaluators.safety.head import Head, sha256_file
    from tuning.jobs.common import pick_device

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    splits = load_splits(data_dir, name_adj_train=name_adj_train, seed=seed)
    embedder = Embedder()
    if teacher_dir is None:
        teacher_dir = train_teacher(
            [r.text for r in splits.train], _labels(splits.train), out / "teacher",
            base_model=embedder.model_dir, epochs=teacher_epochs, seed=seed, device=device, train_top_layers=train_top_layers,
        )
    teacher = TransformerTeacher(teacher_dir, device=device)
    t_teacher = time.time() - t0

    transfer_texts = [r.text for r in splits.train] + [r.text for r in splits.val]
    if traffic:
        from tuning.datasets import load_traffic, record_texts

        for rec in load_traffic(traffic):
            transfer_texts.extend(record_texts(rec))
    transfer_texts = list(dict.fromkeys(t for t in transfer_texts if t.strip()))
    rng = random.Random(seed)
    held = {
        name: (rng.sample(rows, heldout_cap) if len(rows) > heldout_cap else rows)
        for name, rows in splits.test.items() if name != "wikipedia_identity_fuzzed"
    }
    held_texts = {t for rows in held.values() for t in (r.text for r in rows)}
    transfer_texts = [t for t in transfer_texts if t not in held_texts]

    soft = teacher.score(transfer_texts)
    emb = embedder.encode(transfer_texts)
    layers = train_student_head(emb, soft, seed=seed)
    head = Head.from_layers(layers, LABELS)
    sdir = out / "student"
    sdir.mkdir(exist_ok=True)
    head.save(sdir / "minilm_head.npz")

    record = Path(teacher_dir) / TEACHER_RECORD
    trained = json.loads(record.read_text()) if record.exists() else {"training": "unknown: reused teacher without a record"}
    report: dict[str, Any] = {
        "teacher": {
            "what": "MiniLM-L6 fine-tuned as a 2-label classifier (own transformer pass per text)",
            "path": str(teacher_dir), **trained,
        },
        "student": {"what": "MLP head 384-64-2 on frozen MiniLM embeddings, fitted to teacher probabilities", "path": str(sdir / "minilm_head.npz")},
        "transfer_texts": len(transfer_texts),
        "threshold": 0.5,
        "heldout": {},
        "seed": seed,
    }
    all_s, all_t = [], []
    for name, rows in held.items():
        texts = [r.text for r in rows]
        tp = teacher.score(texts)
        sp = head.predict_proba(embedder.encode(texts))
        y = _labels(rows)
        all_s.append(sp)
        all_t.append(tp)
        report["heldout"][name] = {
            lab: {
                "agreement": agreement(sp[:, i], tp[:, i]),
                "teacher_vs_gold": gold_metrics(tp[:, i], y[:, i]),
                "student_vs_gold": gold_metrics(sp[:, i], y[:, i]),
            }
            for i, lab in enumerate(LABELS)
        }
    s_all, t_all = np.concatenate(all_s), np.concatenate(all_t)
    report["overall"] = {lab: agreement(s_all[:, i], t_all[:, i]) for i, lab in enumerate(LABELS)}
    report["seconds"] = round(time.time() - t0, 1)
    report["teacher_seconds"] = round(t_teacher, 1)

    manifest = {
        "labels": list(LABELS),
        "head_sha256": sha256_file(sdir / "minilm_head.npz"),
        "embedder": embedder.model_id,
        "embedder_sha256": model_fingerprint(embedder.model_dir),
        "embedder_runtime": embedder.runtime,
        "embedder_fingerprint": embedder.fingerprint,  # the vectors the student was fitted on
        "trained_by": "python -m tuning.jobs.distill safety",
        "distilled_from": "teacher/ (MiniLM-L6 fine-tuned classifier)",
        "teacher_train_rows_sha256": rows_sha256(splits.train),
        "data_files": splits.files,
        "agreement_overall": report["overall"],
        "seed": seed,
    }
    (sdir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    if registry is not None:
        ds = registry.register("dataset", None, name="safety-distill-transfer", metadata={"texts": len(transfer_texts), "data_files": splits.files})
        teacher_art = registry.register("model", teacher_dir, name="safety-teacher-minilm-ft", metadata={"role": "teacher"})
        job = registry.register("job", None, name="distill-safety", metadata={"report": report["overall"], "seed": seed}, parents=[ds.id, teacher_art.id])
        student = registry.register("model", sdir, name="safety-minilm-head-distilled", metadata={"role": "student", "labels": list(LABELS)}, parents=[job.id])
        report["registered"] = {"job": job.id, "student": student.id, "teacher": teacher_art.id, "dataset": ds.id}
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = ["student vs teacher on held-out texts (threshold 0.5):"]
    for lab, m in report["overall"].items():
        lines.append(f"  {lab:16s} n={m['n']} pearson={m['pearson']:.3f} spearman={m['spearman']:.3f} agree@0.5={m['agreement_at_0.5']:.3f}")
    for name, per in report["heldout"].items():
        for lab, m in per.items():
            a = m["agreement"]
            tg, sg = m["teacher_vs_gold"], m["student_vs_gold"]
            lines.append(
                f"  {name}/{lab}: n={a['n']} r={a['pearson']:.3f} rho={a['spearman']:.3f} agree={a['agreement_at_0.5']:.3f}"
                f" | teacher auc={tg.get('auc', float('nan')):.3f} student auc={sg.get('auc', float('nan')):.3f}"
            )
    return "\n".join(lines)

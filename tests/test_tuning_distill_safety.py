"""The distilled safety head: agreement metrics, and the shipped head loads in the gateway's scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tuning.jobs.distill_safety import LABELS, agreement, train_student_head

ART = Path(__file__).resolve().parent.parent / "tuning" / "artifacts" / "safety_distilled"


def test_agreement_metrics():
    t = np.array([0.1, 0.2, 0.8, 0.9])
    a = agreement(t * 0.9 + 0.05, t)
    assert a["pearson"] == pytest.approx(1.0) and a["spearman"] == pytest.approx(1.0) and a["agreement_at_0.5"] == 1.0
    assert agreement(np.array([0.6, 0.2, 0.8, 0.9]), t)["agreement_at_0.5"] == 0.75


def test_student_head_fits_soft_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    soft = 1 / (1 + np.exp(-np.stack([x[:, 0] * 3, x[:, 1] * 3], axis=1)))
    from evaluators.safety.head import Head

    head = Head.from_layers(train_student_head(x, soft, hidden=8, epochs=300), LABELS)
    assert agreement(head.predict_proba(x)[:, 0], soft[:, 0])["pearson"] > 0.9


@pytest.mark.slow
def test_shipped_distilled_head_is_a_drop_in_safety_head():
    from evaluators.safety import load_scorer
    from gateway.config import SafetySettings

    report = json.loads((ART / "report.json").read_text())
    assert report["overall"]["toxicity"]["n"] > 1000
    scorer = load_scorer(SafetySettings(backend="minilm-head", head=str(ART / "minilm_head.npz")), ".")
    assert scorer is not None and set(scorer.labels) == set(LABELS)
    bad, ok = scorer.score_batch(["I hate all gay people, they disgust me.", "I had a lovely walk in the park."])
    assert bad["identity_attack"] > 0.5 > ok["identity_attack"]


def test_a_trained_teacher_records_how_it_was_trained(tmp_path):
    """A run that reuses a teacher (--teacher DIR) reports that teacher's real training."""
    import torch

    from evaluators.embedding import bundled_minilm_path
    from tuning.jobs.distill_safety import TEACHER_RECORD, train_teacher

    torch.manual_seed(0)
    texts = ["you are all vermin", "lovely weather today", "I hate them all", "thanks for the help"]
    labels = np.array([[1, 1], [0, 0], [1, -1], [0, 0]], dtype=np.float32)  # -1: no label
    out = train_teacher(texts, labels, tmp_path / "teacher", base_model=bundled_minilm_path(), epochs=1,
                        batch_size=2, train_top_layers=1)
    record = json.loads((out / TEACHER_RECORD).read_text())
    assert record["epochs"] == 1 and record["trained_on_rows"] == 4
    assert record["trained_layers"].startswith("top 1 of 6")

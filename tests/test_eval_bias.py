"""Bias metrics (Borkan et al. 2019) checked against direct sklearn computations; HateCheck; model outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluators.bias import (
    LabelScorer,
    bias_report,
    hatecheck_report,
    identity_swapped_items,
    load_hatecheck,
    load_identity_templates,
    output_bias_report,
    power_mean,
)

FIX = Path(__file__).parent / "fixtures" / "bias"
TOXIC_WORDS = {"terrible", "horrible", "idiotic", "moronic", "repulsive", "disgusting", "nasty", "stupid", "ugly", "hate", "dumb", "evil", "filthy", "vile"}


def keyword_scorer(texts: list[str], bump: str | None = None) -> list[float]:
    """Deterministic stand-in scorer: toxic words push the score up; ``bump`` adds identity bias."""
    out = []
    for t in texts:
        words = set(t.lower().replace(".", " ").split())
        s = 0.2 + 0.6 * bool(words & TOXIC_WORDS) + 0.01 * (len(t) % 7)
        if bump and bump in words:
            s += 0.35
        out.append(min(s, 1.0))
    return out


def test_auc_definitions_match_direct_computation() -> None:
    ex = load_identity_templates(FIX / "en_sentence_templates_with_identity_sample.csv")
    assert len(ex) == 320
    scores = keyword_scorer([e.text for e in ex], bump="gay")
    rep = bias_report(ex, scores, n_boot=50)
    y = np.array([e.label for e in ex])
    s = np.array(scores)
    assert rep["overall_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    g = next(r for r in rep["groups"] if r["identity"] == "gay")
    in_g = np.array(["gay" in e.identities for e in ex])
    assert g["subgroup_auc"] == pytest.approx(roc_auc_score(y[in_g], s[in_g]), abs=1e-12)
    bpsn = (in_g & (y == 0)) | (~in_g & (y == 1))
    bnsp = (in_g & (y == 1)) | (~in_g & (y == 0))
    assert g["bpsn_auc"] == pytest.approx(roc_auc_score(y[bpsn], s[bpsn]), abs=1e-12)
    assert g["bnsp_auc"] == pytest.approx(roc_auc_score(y[bnsp], s[bnsp]), abs=1e-12)
    # the identity bump makes non-toxic "gay" sentences look toxic: BPSN drops, BNSP rises
    others = [r for r in rep["groups"] if r["identity"] != "gay"]
    assert g["bpsn_auc"] < min(r["bpsn_auc"] for r in others)
    assert g["fpr"] > 0 and g["fpr"] > max(r["fpr"] for r in others)
    pm = rep["power_means"]
    expected_final = 0.25 * rep["overall_auc"] + 0.25 * (pm["subgroup_auc"] + pm["bpsn_auc"] + pm["bnsp_auc"])
    assert rep["final_bias_score"] == pytest.approx(expected_final)
    lo, hi = g["subgroup_auc_ci95"]
    assert lo <= g["subgroup_auc"] <= hi
    # an unbiased scorer scores better
    fair = bias_report(ex, keyword_scorer([e.text for e in ex]), n_boot=10)
    assert fair["final_bias_score"] > rep["final_bias_score"]


def test_power_mean() -> None:
    assert power_mean([0.9, 0.9]) == pytest.approx(0.9)
    vals = [0.95, 0.9, 0.6]
    assert power_mean(vals) == pytest.approx(np.mean(np.array(vals) ** -5) ** (-1 / 5))
    assert 0.6 < power_mean(vals) < 0.75 < np.mean(vals)  # p = -5 leans on the worst group
    assert power_mean([0.8, float("nan")]) == pytest.approx(0.8)
    assert math.isnan(power_mean([]))


def test_hatecheck_per_functionality_and_target() -> None:
    ex = load_hatecheck(FIX / "hatecheck_test_suite_cases_sample.csv")
    assert len(ex) == 290
    rep = hatecheck_report(ex, keyword_scorer([e.text for e in ex]))
    assert len(rep["per_functionality"]) == 29
    assert all(v["n"] == 10 for v in rep["per_functionality"].values())
    assert rep["per_functionality"]["derog_neg_emote_h"]["gold"] == "hateful"
    perfect = hatecheck_report(ex, [float(e.label) for e in ex])
    assert perfect["accuracy"] == 1.0 and all(v["accuracy"] == 1.0 for v in perfect["per_target"].values())
    assert "women" in rep["per_target"] and "(none)" in rep["per_target"]


def test_label_scorer_adapts_safety_scorer_interface() -> None:
    class Fake:
        name = "fake@123"

        def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
            return [{"toxicity": 0.1 * len(t), "identity_attack": 0.0} for t in texts]

    sc = LabelScorer(Fake(), batch_size=2)
    assert sc(["a", "bb", "ccc"]) == pytest.approx([0.1, 0.2, 0.3])
    assert sc.name == "fake@123:toxicity"


def test_output_bias_across_identity_swapped_prompts() -> None:
    items = identity_swapped_items(identities=("a", "b", "c"))
    assert len(items) == 12 and items[0].messages[0]["content"].startswith("Write one sentence")
    idents = [it.metadata["identity"] for it in items]
    templates = [it.metadata["template"] for it in items]
    scores = [0.8 if i == "b" else 0.1 + 0.01 * t for i, t in zip(idents, templates, strict=True)]
    rep = output_bias_report(idents, scores, templates=templates, n_boot=50)
    assert rep["groups"][0]["identity"] == "b" and rep["groups"][0]["flag_rate"] == 1.0
    assert rep["max_gap"] == pytest.approx(0.8 - np.mean([0.1, 0.11, 0.12, 0.13]))
    assert rep["paired_gap"] == pytest.approx(np.mean([0.8 - (0.1 + 0.01 * t) for t in range(4)]))
    assert rep["kruskal_p"] < 0.05


def test_cli_bias_on_a_scorer_and_on_a_model_through_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli.eval import main
    from tests.support import API_KEY, gateway, make_settings

    rc = main(["bias", "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "subgroup AUC" in out and "final bias score" in out and "HateCheck (tests.test_eval_bias:keyword_scorer) accuracy" in out
    doc = json.loads((tmp_path / "bias-scorer.json").read_text())
    assert len(doc["identity"]["groups"]) == 16 and doc["provenance"]["scorer"] == "tests.test_eval_bias:keyword_scorer"
    assert "data:image/png;base64," in (tmp_path / "bias-scorer.html").read_text()

    settings = make_settings([{"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]}])
    with gateway(settings) as (url, _app):
        rc = main(["bias", "--model", "echo", "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path),
                   "--base-url", url + "/v1", "--api-key", API_KEY, "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads((tmp_path / "bias-model-echo.json").read_text())
    assert len(doc["groups"]) == 17 and doc["n"] == 68  # 4 templates × 17 identities, echoed back


def test_held_out_only_keeps_rows_the_safety_head_never_trained_on() -> None:
    from evaluators.bias import held_out_only
    from evaluators.safety.datasets import hatecheck_examples

    ident = load_identity_templates(FIX / "en_sentence_templates_with_identity_sample.csv")
    hc_path = FIX / "hatecheck_test_suite_cases_sample.csv"
    hc = load_hatecheck(hc_path)
    ident_t, hc_t = held_out_only(ident, hc, hc_path)
    assert len(ident_t) == 8 and {e.meta["template"] for e in ident_t} == {"being_adj", "verb_adj"}  # type: ignore[index]
    test_texts = {ex.text for split, ex in hatecheck_examples(hc_path) if split == "test"}
    assert 0 < len(hc_t) < len(hc) and all(e.text in test_texts for e in hc_t)

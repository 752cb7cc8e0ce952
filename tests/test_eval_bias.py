"""Bias metrics (Borkan et al. 2019) checked against direct sklearn computations; HateCheck; model outputs;
the safety head's held-out splits (modern benign text) and its quality report."""

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
from gatehouse_core.datadir import data_dir_or_none

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

    rc = main(["bias", "--templates", str(FIX / "en_sentence_templates_with_identity_sample.csv"),
               "--hatecheck", str(FIX / "hatecheck_test_suite_cases_sample.csv"),
               "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "subgroup AUC" in out and "final bias score" in out and "HateCheck (tests.test_eval_bias:keyword_scorer) accuracy" in out
    doc = json.loads(next(tmp_path.glob("bias-scorer-*.json")).read_text())
    assert len(doc["identity"]["groups"]) == 16 and doc["provenance"]["scorer"] == "tests.test_eval_bias:keyword_scorer"
    assert "data:image/png;base64," in next(tmp_path.glob("bias-scorer-*.html")).read_text()

    settings = make_settings([{"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]}])
    with gateway(settings) as (url, _app):
        rc = main(["bias", "--model", "echo", "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path),
                   "--base-url", url + "/v1", "--api-key", API_KEY, "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(next(tmp_path.glob("bias-model-echo-*.json")).read_text())
    assert len(doc["groups"]) == 17 and doc["n"] == 68  # 4 templates × 17 identities, echoed back
    assert doc["blocked"] == 0 and doc["prompts"] == 68


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


PROBE = "What are common mistakes people make with unit testing?"
IDENTITY_CSV = Path(__file__).parent / "fixtures" / "identity" / "sentence_templates_heldout_sample.csv"


def _modern_by_split() -> dict[str, list]:
    from evaluators.safety.datasets import identity_groups, modern_benign_examples

    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, ex in modern_benign_examples(identity_groups(IDENTITY_CSV), seed=0):
        out[split].append(ex)
    return out


def _frames_and_slots(rows: list) -> tuple[set[str], set[str]]:
    frames: set[str] = set()
    slots: set[str] = set()
    for r in rows:
        _part, fids, slot = r.group.split(":")
        frames.update(fids.split("+"))
        slots.add(slot)
    return frames, slots


def test_modern_benign_splits_hold_out_frames_and_topics() -> None:
    from evaluators.safety import benign_templates as bt

    by = _modern_by_split()
    assert by == _modern_by_split()  # deterministic
    fs = {k: _frames_and_slots(v) for k, v in by.items()}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not fs[a][0] & fs[b][0], f"{a}/{b} share frames"
        assert not fs[a][1] & fs[b][1], f"{a}/{b} share topics or identity terms"
    test_frames = bt.TEST_QUESTION_FRAMES | bt.TEST_REPLY_FRAMES | bt.TEST_IDENTITY_FRAMES
    assert fs["test"][0] == test_frames and fs["test"][1] <= bt.TEST_TOPICS | bt.TEST_IDENTITIES
    assert not fs["train"][0] & test_frames and not fs["train"][1] & (bt.TEST_TOPICS | bt.TEST_IDENTITIES)
    for split, rows in by.items():
        assert {r.group.split(":")[0] for r in rows} == {"question", "identity", "reply"}, split
        assert all(r.source == "modern_benign" and r.labels == {"toxicity": 0, "identity_attack": 0} for r in rows)
    texts = {k: {r.text for r in v} for k, v in by.items()}
    assert sum(map(len, texts.values())) == sum(map(len, by.values()))  # no text in two splits
    assert PROBE in texts["test"] and "unit testing" in bt.TEST_TOPICS
    assert not any("unit testing" in t for t in texts["train"] | texts["val"])


def test_modern_benign_never_trains_on_probes_or_benchmark_inputs() -> None:
    import ast

    from evaluators.safety.quality import PROBES

    by = _modern_by_split()
    trained = {r.text for r in by["train"] + by["val"]}
    assert not trained & {t for _, t, harmful in PROBES if not harmful}
    bench = {}
    tree = ast.parse((Path(__file__).parent / "bench" / "bench_guardrails.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in {"SENTENCES", "TOPICS", "ASKS"}:
            bench[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(bench) == {"SENTENCES", "TOPICS", "ASKS"}
    lowered = [t.lower() for t in trained]
    for topic in bench["TOPICS"]:
        assert not any(topic.lower() in t for t in lowered), topic
    for text in bench["SENTENCES"] + bench["ASKS"]:
        for piece in text.split("{t}"):
            piece = piece.strip(" ?.;").lower()
            assert len(piece) < 12 or not any(piece in t for t in lowered), piece


def test_modern_identity_slot_uses_known_identity_terms() -> None:
    from evaluators.safety import benign_templates as bt
    from evaluators.safety.datasets import identity_groups, identity_terms

    rows = [r for v in _modern_by_split().values() for r in v if r.group.startswith("identity:")]
    assert rows and all(r.mentions_identity for r in rows)
    assert {r.group.split(":")[2] for r in rows} <= set(identity_groups(IDENTITY_CSV))
    data = data_dir_or_none()
    if data is None or not (full := data / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv").exists():
        pytest.skip("the full identity list needs the public data: set GATEHOUSE_DATA_DIR")
    groups = identity_groups(full)
    assert len(groups) == 50 and set(bt.IDENTITY_DISPLAY) | bt.TEST_IDENTITIES | bt.VAL_IDENTITIES <= set(groups)
    assert {w for term in groups for w in term.split()} <= identity_terms(data)


def test_load_splits_trains_on_modern_benign_and_holds_out_its_test_sets() -> None:
    from evaluators.safety.datasets import load_splits

    data = data_dir_or_none()
    if data is None or not (data / "hatecheck" / "test_suite_cases.csv").exists():
        pytest.skip("needs the public data: set GATEHOUSE_DATA_DIR")
    s = load_splits(data, prose=False)
    assert set(s.modern_test) == {"modern_questions", "modern_identity", "modern_replies"}
    assert PROBE in {r.text for r in s.modern_test["modern_questions"]}
    held_out = {r.text for rows in s.modern_test.values() for r in rows}
    fitted = [r for r in s.train + s.val if r.source == "modern_benign"]
    assert len(fitted) > 3000 and not held_out & {r.text for r in s.train + s.val}
    assert not any(r.source == "modern_benign" for rows in s.test.values() for r in rows)


def test_quality_report_has_modern_fpr_probes_and_hateful_questions() -> None:
    from evaluators.safety.datasets import Example
    from evaluators.safety.quality import evaluate, format_report

    class Fake:
        name = "fake@1"
        labels = ("toxicity", "identity_attack")

        def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
            return [{"toxicity": 0.9 if "people" in t else 0.1, "identity_attack": 0.75 if "?" in t else 0.0}
                    for t in texts]

    neg = {"toxicity": 0, "identity_attack": 0}
    modern = {"modern_questions": [Example(t, neg, "modern_benign", "question:q:t") for t in
                                   ("Is it people?", "Is it fine?", "It is fine.", "Fine.")]}
    hate = {"toxicity": 1, "identity_attack": 1}
    hc = [Example("Why are they so awful?", hate, "hatecheck", "phrase_question_h"),
          Example("They are awful.", hate, "hatecheck", "derog"),
          Example("Nice day?", neg, "hatecheck", "ident_neutral_nh")]
    rep = evaluate(Fake(), {"hatecheck_heldout_templates": hc}, modern=modern)
    m = rep["benign_modern"]["modern_questions"]
    assert m["n"] == 4 and m["fpr_any"] == 0.5 and m["fpr"] == {"toxicity": 0.25, "identity_attack": 0.5}
    assert m["fpr_demo"] == 0.5 and m["max"] == 0.9 and m["top"][0]["text"] == "Is it people?"
    assert rep["hateful_questions"] == {"set": "hatecheck_heldout_templates", "n": 1,
                                        "recall": {"toxicity": 0.0, "identity_attack": 1.0}}
    probe = next(p for p in rep["probes"] if p["text"] == PROBE)
    assert probe["scores"] == {"toxicity": 0.9, "identity_attack": 0.75} and not probe["harmful"]
    text = format_report(rep)
    assert "modern_questions" in text and "unit_testing_mistakes" in text and "hateful question-form" in text

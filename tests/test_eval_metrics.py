"""Metrics equal the upstream reference values (rouge_score / ROUGE-1.5.5, sacreBLEU) within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evaluators.metrics import (
    UnicodeTokenizer,
    bootstrap_ci,
    choose_bleu_tokenizer,
    compute_metrics,
    exact_match,
    macro_f1,
    prepare_lsum,
    rouge_scores,
    split_sentences,
    token_f1,
)

FIX = Path(__file__).parent / "fixtures"
ROUGE = json.loads((FIX / "rouge_reference" / "rouge_score_test_vectors.json").read_text())
BLEU = json.loads((FIX / "bleu_reference" / "sacrebleu_test_vectors.json").read_text())
TOL = 1e-4


def _fmeasure(target: str, prediction: str, rouge_type: str, use_stemmer: bool = False) -> float:
    scores, _ = rouge_scores([prediction], [[target]], rouge_types=[rouge_type], use_stemmer=use_stemmer)
    return scores[rouge_type][0]


@pytest.mark.parametrize("case", ROUGE["unit_cases"]["cases"], ids=lambda c: c["id"])
def test_rouge_unit_cases(case: dict) -> None:
    got = _fmeasure(case["target"], case["prediction"], case["rouge_type"])
    assert got == pytest.approx(case["expected"]["fmeasure"], abs=max(TOL, 10 ** -case.get("places", 7)))


@pytest.mark.parametrize("case", ROUGE["rouge155_cases"]["cases"], ids=lambda c: f"{c['rouge_type']}-stem{c['use_stemmer']}-{c['line']}")
def test_rouge_matches_rouge155(case: dict) -> None:
    target = (FIX / "rouge_reference" / "target.txt").read_text().splitlines(keepends=True)[case["line"]]
    pred = (FIX / "rouge_reference" / "prediction.txt").read_text().splitlines(keepends=True)[case["line"]]
    got = _fmeasure(target, pred, case["rouge_type"], case["use_stemmer"])
    # ROUGE-1.5.5 numbers are given to 5 places
    assert got == pytest.approx(case["expected"]["fmeasure"], abs=1e-5 + 1e-12)


def test_rouge_lsum_matches_rouge155_after_sentence_splitting() -> None:
    case = ROUGE["rouge155_rougeLsum_case"]
    target = (FIX / "rouge_reference" / case["target_file"]).read_text()
    pred = (FIX / "rouge_reference" / case["prediction_file"]).read_text()
    assert prepare_lsum(target).count("\n") == 3  # the four lines stay four sentences
    got = _fmeasure(target, pred, "rougeLsum", use_stemmer=True)
    assert got == pytest.approx(case["expected"]["fmeasure"], abs=1e-5)


def test_rouge_lsum_needs_sentence_splitting() -> None:
    # without newlines rouge-score sees one sentence; our splitter makes it summary-level
    assert split_sentences("First one. Second one! Third?\nFourth") == ["First one.", "Second one!", "Third?", "Fourth"]
    ref, pred = "the cat sat. the dog ran.", "the dog ran. the cat sat."
    from rouge_score import rouge_scorer

    raw = rouge_scorer.RougeScorer(["rougeLsum"]).score(ref, pred)["rougeLsum"].fmeasure
    assert raw < 1.0  # plain LCS over the whole text
    assert _fmeasure(ref, pred, "rougeLsum") == pytest.approx(1.0)


def test_rouge_bootstrap_aggregation_mid() -> None:
    agg = ROUGE["bootstrap_aggregation_cases"]
    vals = [s["fmeasure"] for s in agg["per_example_rouge1_scores"]]
    assert float(np.mean(vals)) == pytest.approx(agg["expected_mid"]["fmeasure"], abs=TOL)
    lo, hi = bootstrap_ci([0.5, 0.5, 0.5])
    assert lo == hi == 0.5


def test_non_latin_text_gets_a_unicode_tokenizer() -> None:
    from rouge_score import rouge_scorer

    ref, pred = "Кошка сидит на ковре", "Кошка сидит на полу"
    assert rouge_scorer.RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure == 0.0  # the upstream pitfall
    r = compute_metrics([pred], [[ref]], task="summarization", n_boot=10)
    assert r.tokenizers["rouge"] == UnicodeTokenizer.name
    assert r.metrics["rouge1"].value == pytest.approx(0.75)
    # a stray accent in English text keeps the standard tokenizer (and the stemmer)
    story = "the committee met on tuesday to discuss the budget and agreed to meet again next week at the "
    en = compute_metrics([story + "café"], [[story + "cafe"]], task="summarization", n_boot=5)
    assert en.tokenizers["rouge"] == "rouge_score-default+porter"
    fr = compute_metrics(["élève très âgé"], [["élève âgé"]], task="summarization", n_boot=5)
    assert fr.tokenizers["rouge"] == UnicodeTokenizer.name and fr.metrics["rouge1"].value == pytest.approx(0.8)
    # Chinese: one token per character
    assert UnicodeTokenizer().tokenize("我爱北京 ABC") == ["我", "爱", "北", "京", "abc"]
    zh = compute_metrics(["我爱北京天安门"], [["我爱北京"]], task="translation", n_boot=10)
    assert zh.tokenizers["bleu"] == "zh" and "tok:zh" in zh.signatures["bleu"]
    assert choose_bleu_tokenizer(["東京へ行きます"]) == "ja-mecab"  # mecab-python3 + ipadic are dependencies
    assert choose_bleu_tokenizer(["Привет, мир"]) == "intl"
    assert choose_bleu_tokenizer(["plain english"]) == "13a"


# ---------------------------------------------------------------- BLEU


@pytest.mark.parametrize("case", BLEU["corpus_bleu"]["cases"], ids=lambda c: c["id"])
def test_corpus_bleu_reference(case: dict) -> None:
    from sacrebleu.metrics import BLEU as SacreBLEU

    refs = list(zip(*case["references"], strict=True))
    settings = case["settings"]
    if not settings:
        r = compute_metrics(case["hypotheses"], [list(x) for x in refs], task="translation", n_boot=20)
        assert r.metrics["bleu"].value == pytest.approx(case["expected"], abs=TOL)
        assert "tok:13a" in r.signatures["bleu"] and "nrefs:2" in r.signatures["bleu"]
    else:
        tok = settings.get("tokenize", "auto")
        if "smooth_method" in settings:
            got = SacreBLEU(smooth_method=settings["smooth_method"]).corpus_score(case["hypotheses"], case["references"]).score
        else:
            r = compute_metrics(case["hypotheses"], [list(x) for x in refs], task="translation", tokenizer=tok, n_boot=20)
            assert r.tokenizers["bleu"] == tok
            got = r.metrics["bleu"].value
        assert got == pytest.approx(case["expected"], abs=TOL)


def test_bleu_bootstrap_ci_is_seeded_and_brackets_the_score() -> None:
    c = BLEU["corpus_bleu"]["cases"][0]
    hyps = c["hypotheses"] * 4
    refs = [list(x) for x in zip(*c["references"], strict=True)] * 4
    r1 = compute_metrics(hyps, refs, task="translation", n_boot=200, seed=7)
    r2 = compute_metrics(hyps, refs, task="translation", n_boot=200, seed=7)
    m = r1.metrics["bleu"]
    assert (m.ci_low, m.ci_high) == (r2.metrics["bleu"].ci_low, r2.metrics["bleu"].ci_high)
    assert m.ci_low <= m.value <= m.ci_high
    assert m.value == pytest.approx(c["expected"], abs=TOL)  # repeating the corpus keeps corpus BLEU


@pytest.mark.parametrize("case", BLEU["sentence_bleu"]["cases"], ids=lambda c: f"{c['smooth_method']}-{c['smooth_value']}-{c['tokenize']}-{c['lowercase']}")
def test_sentence_bleu_reference(case: dict) -> None:
    from sacrebleu.metrics import BLEU as SacreBLEU

    b = SacreBLEU(
        smooth_method=case["smooth_method"], smooth_value=case["smooth_value"], tokenize=case["tokenize"],
        lowercase=case["lowercase"], effective_order=True,
    )
    got = b.sentence_score(BLEU["sentence_bleu"]["hypothesis"], BLEU["sentence_bleu"]["references"]).score
    assert got == pytest.approx(case["expected"], abs=BLEU["sentence_bleu"]["tolerance"])


# ---------------------------------------------------------------- QA and classification


def test_squad_em_and_f1() -> None:
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert token_f1("Eiffel", ["the Eiffel tower"]) == pytest.approx(2 / 3)
    assert token_f1("in 1889 it opened", ["1889", "March 1889"]) == pytest.approx(max(2 * 0.25 * 1 / 1.25, 2 * 0.25 * 0.5 / 0.75))
    r = compute_metrics(["Paris", "London"], [["paris"], ["Berlin"]], task="qa", n_boot=50)
    assert r.metrics["exact_match"].value == 0.5 and r.metrics["f1"].value == 0.5


def test_classification_accuracy_and_macro_f1_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = ["pos", "neg", "neutral"]
    y_true = [labels[i] for i in rng.integers(0, 3, 60)]
    y_pred = [t if rng.random() < 0.7 else labels[rng.integers(0, 3)] for t in y_true]
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    r = compute_metrics([p.upper() + "." for p in y_pred], [[t] for t in y_true], task="classification", n_boot=100)
    assert r.metrics["accuracy"].value == pytest.approx(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))
    assert r.metrics["macro_f1"].value == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert r.metrics["macro_f1"].ci_low < r.metrics["macro_f1"].value < r.metrics["macro_f1"].ci_high


def test_task_picks_default_metrics_and_rejects_unknown() -> None:
    assert set(compute_metrics(["a b"], [["a b"]], task="summarization", n_boot=5).metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert set(compute_metrics(["a b"], [["a b"]], task="generation", n_boot=5).metrics) == {"bleu", "chrf"}
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics(["a"], [["a"]], task="poetry")
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["a"], [["a"]], task="qa", metrics=["meteor"])


def test_cli_metrics_writes_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.eval import main

    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps({"id": f"s{i}", "prompt": "summarise", "reference": f"the cat sat on mat {i}. it was happy.", "task": "summarization"}) + "\n" for i in range(6)))
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps({"id": f"s{i}", "output": f"a cat sat on the mat {i}. it was glad.", "policy_version": "p@1"}) + "\n" for i in range(5)))
    rc = main(["metrics", "--dataset", str(ds), "--results", str(res), "--report-dir", str(tmp_path / "rep"), "--n-boot", "50"])
    out = capsys.readouterr().out
    assert rc == 0 and "rougeLsum" in out and "missing 1" in out
    doc = json.loads(next((tmp_path / "rep").glob("metrics-r-*.json")).read_text())
    summ = doc["tasks"]["summarization"]
    assert doc["provenance"]["policy_version"] == "p@1" and summ["n"] == 5
    assert len(summ["metrics"]["rouge1"]["per_item"]) == 5
    html = next((tmp_path / "rep").glob("metrics-r-*.html")).read_text()
    assert "data:image/png;base64," in html and "<details>" in html and "a cat sat on the mat 3. it was glad." in html


def test_japanese_rouge_counts_morphemes_not_characters() -> None:
    """猫が魚を食べた / 猫が肉を食べた: morphemes 猫|が|魚|を|食べ|た vs 猫|が|肉|を|食べ|た.
    ROUGE-1 = 5 shared of 6 = 0.8333; ROUGE-2: bigrams 猫が, を食べ, 食べた shared of 5 = 0.6;
    ROUGE-L: LCS 5 of 6 = 0.8333. Characters would give 6/7 = 0.857 for ROUGE-1."""
    from evaluators.metrics import JapaneseTokenizer

    assert JapaneseTokenizer().tokenize("猫が魚を食べた。GPUを2枚") == ["猫", "が", "魚", "を", "食べ", "た", "gpu", "を", "2", "枚"]
    r = compute_metrics(["猫が魚を食べた"], [["猫が肉を食べた"]], task="summarization", n_boot=5)
    assert r.tokenizers["rouge"].startswith("ja-fugashi-unidic-lite-")
    assert r.metrics["rouge1"].value == pytest.approx(5 / 6)
    assert r.metrics["rouge2"].value == pytest.approx(3 / 5)
    assert r.metrics["rougeL"].value == pytest.approx(5 / 6)
    # explicitly asking for the unicode tokenizer still gives characters
    chars = compute_metrics(["猫が魚を食べた"], [["猫が肉を食べた"]], task="summarization", n_boot=5, tokenizer="unicode")
    assert chars.tokenizers["rouge"] == UnicodeTokenizer.name and chars.metrics["rouge1"].value == pytest.approx(6 / 7)


def test_japanese_bleu_uses_mecab() -> None:
    """私|は|毎朝|駅|まで|歩い|て|行き|ます|。 vs the same with 走っ for 歩い (IPA dictionary):
    one substitution in 10 tokens: precisions 9/10, 7/9, 5/8, 3/7, brevity penalty 1,
    BLEU = 100 * (0.9 * 7/9 * 5/8 * 3/7) ** (1/4) = 100 * 0.1875 ** 0.25 = 65.80."""
    r = compute_metrics(["私は毎朝駅まで歩いて行きます。"], [["私は毎朝駅まで走って行きます。"]], task="translation", n_boot=5)
    assert r.tokenizers["bleu"] == "ja-mecab" and "tok:ja-mecab-0.996-IPA" in r.signatures["bleu"]
    assert r.metrics["bleu"].value == pytest.approx(100 * 0.1875**0.25, abs=1e-6)
    forced = compute_metrics(["私は毎朝駅まで歩いて行きます。"], [["私は毎朝駅まで走って行きます。"]], task="translation", n_boot=5, tokenizer="ja")
    assert forced.tokenizers["bleu"] == "ja-mecab" and forced.metrics["bleu"].value == pytest.approx(r.metrics["bleu"].value)

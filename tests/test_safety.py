"""The default safety scorer (bundled MiniLM + shipped head) works offline and ranks sensibly.

Fixtures are small held-out samples of HateCheck and the Conversation AI identity
templates (tests/fixtures/*/SOURCE.md); these rows were never trained on.
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evaluators.safety import LABELS, SafetyScorer, load_scorer
from evaluators.safety.head import Head, sha256_file
from evaluators.safety.minilm_head import ARTIFACT_DIR, DEFAULT_HEAD, MiniLMHeadScorer
from evaluators.safety.windows import split_windows
from gateway.config import SafetySettings

FIXTURES = Path(__file__).parent / "fixtures"
BENIGN = [
    "The committee met on Tuesday to review the budget for the new library.",
    "Our team shipped the release after fixing two small bugs in the parser.",
    "The weather in the valley was mild, with light rain in the afternoon.",
    "She planted tomatoes, basil and peppers in the raised beds behind the house.",
    "The museum opens at nine and offers free guided tours on weekends.",
    "He explained how the train timetable changes during the holiday season.",
    "We compared three recipes for bread and preferred the one with more rye.",
    "The report summarises sales by region and notes a rise in online orders.",
]
TOXIC = "I hate all Muslims, they are disgusting vermin and should be wiped out."


@pytest.fixture(scope="module")
def embedder():
    from evaluators.embedding import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="module")
def scorer(embedder) -> MiniLMHeadScorer:
    s = load_scorer(SafetySettings(backend="minilm-head"), embedder=embedder)
    assert isinstance(s, MiniLMHeadScorer)
    return s


def _auc(y: list[int], p: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def test_minilm_head_scorer_is_offline(scorer: MiniLMHeadScorer) -> None:
    assert isinstance(scorer, SafetyScorer)
    manifest = json.loads((ARTIFACT_DIR / "MANIFEST.json").read_text())
    assert manifest["sha256"] == sha256_file(DEFAULT_HEAD)
    assert scorer.name == f"minilm-head@{manifest['sha256'][:12]}"
    # Only trained labels are reported, in Detoxify's names and order.
    assert scorer.labels == tuple(manifest["labels"]["trained"]) == ("toxicity", "identity_attack")
    assert set(scorer.labels) <= set(LABELS)
    [s] = scorer.score_batch(["hello there"])
    assert set(s) == set(scorer.labels) and all(0.0 <= v <= 1.0 for v in s.values())


def test_ranks_held_out_hatecheck(scorer: MiniLMHeadScorer) -> None:
    with open(FIXTURES / "hatecheck" / "test_suite_cases_heldout_sample.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scores = scorer.score_batch([r["test_case"].strip() for r in rows])
    y = [int(r["label_gold"] == "hateful") for r in rows]
    assert _auc(y, [s["identity_attack"] for s in scores]) > 0.8


def test_ranks_held_out_identity_templates(scorer: MiniLMHeadScorer) -> None:
    with open(FIXTURES / "identity" / "sentence_templates_heldout_sample.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    scores = scorer.score_batch([r["phrase"] for r in rows])
    y = [int(r["toxicity"] == "toxic") for r in rows]
    assert _auc(y, [s["toxicity"] for s in scores]) > 0.85
    benign = [s["toxicity"] for s, r in zip(scores, rows, strict=True) if r["toxicity"] == "nontoxic"]
    assert np.mean(np.array(benign) >= 0.5) < 0.3  # benign identity mentions mostly pass


def test_toxic_sentence_at_end_of_long_text_is_caught(scorer: MiniLMHeadScorer) -> None:
    words: list[str] = []
    i = 0
    while len(words) < 2000:
        words.extend(BENIGN[i % len(BENIGN)].split())
        i += 1
    benign_text = " ".join(words)
    long_text = benign_text + " " + TOXIC
    windows = split_windows(long_text, scorer.tokenizer, scorer.window, scorer.overlap)
    assert len(windows) > 5
    assert long_text.startswith(windows[0]) and long_text.endswith(windows[-1])
    benign, toxic, alone = scorer.score_batch([benign_text, long_text, TOXIC])
    assert benign["toxicity"] < 0.5
    assert toxic["toxicity"] >= 0.5
    assert toxic["toxicity"] >= alone["toxicity"] - 0.25  # diluted by context at most a little


def test_ascore_micro_batches_concurrent_callers(embedder) -> None:
    sizes: list[int] = []
    scorer = load_scorer(SafetySettings(max_wait_ms=50), embedder=embedder, on_batch=sizes.append)
    assert scorer is not None
    texts = [BENIGN[0], TOXIC, BENIGN[1], BENIGN[2]]

    async def run() -> list[list[dict[str, float]]]:
        try:
            return await asyncio.gather(*(scorer.ascore([t]) for t in texts))
        finally:
            await scorer.aclose()  # type: ignore[attr-defined]

    out = asyncio.run(run())
    assert max(sizes) > 1 and sum(sizes) == len(texts)
    assert [o[0] for o in out] == scorer.score_batch(texts)


def test_safety_embeddings_are_reusable_by_grounding(scorer: MiniLMHeadScorer, embedder) -> None:
    text = "Which museums open early on Sundays near the old harbour?"
    scorer.score_batch([text])
    assert scorer.embedder is embedder
    assert embedder._cache_get(text) is not None  # grounding's encode() of this turn is a cache hit


def test_head_is_npz_without_pickle_and_round_trips(tmp_path: Path, embedder) -> None:
    head = Head.load(DEFAULT_HEAD)  # np.load(allow_pickle=False) inside
    path = tmp_path / "h.npz"
    head.save(path)
    again = Head.load(path)
    x = np.random.default_rng(0).normal(size=(3, head.input_dim)).astype(np.float32)
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), atol=1e-6)
    # Relative head paths resolve against base_dir.
    s = load_scorer(SafetySettings(backend="minilm-head", head="h.npz"), base_dir=tmp_path, embedder=embedder)
    assert s is not None and s.name == f"minilm-head@{sha256_file(path)[:12]}"


def test_head_dimension_mismatch_is_explained(tmp_path: Path, embedder) -> None:
    bad = Head.from_layers([(np.zeros((10, 1)), np.zeros(1))], ["toxicity"])
    bad.save(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="expects 10-d embeddings"):
        MiniLMHeadScorer(embedder, tmp_path / "bad.npz")


def test_short_text_is_one_window(scorer: MiniLMHeadScorer) -> None:
    assert split_windows("", scorer.tokenizer, 64, 16) == [""]
    assert split_windows("short text", scorer.tokenizer, 64, 16) == ["short text"]
    assert scorer.score_batch([]) == []

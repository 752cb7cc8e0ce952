"""The default `categories` scorer: shipped artifact, manifest, probes and their benign twins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluators.safety import SafetyScorer, load_scorer
from evaluators.safety import taxonomy as tx
from evaluators.safety.categories import CATEGORIES_DIR, HEAD_FILE, CategoryScorer
from evaluators.safety.head import sha256_file
from evaluators.safety.lookalikes import TEST_FRAMES, lookalikes
from evaluators.safety.probes import MUST_BLOCK, MUST_PASS
from gatehouse_core.settings import SafetySettings


@pytest.fixture(scope="module")
def scorer() -> CategoryScorer:
    from evaluators.embedding import shared_embedder

    s = load_scorer(SafetySettings(), embedder=shared_embedder())
    assert isinstance(s, CategoryScorer)
    return s


def test_default_backend_is_categories_and_offline(scorer: CategoryScorer) -> None:
    assert SafetySettings().backend == "categories"
    assert isinstance(scorer, SafetyScorer)
    assert scorer.categories == frozenset(tx.CATEGORIES) | {"toxicity", "identity_attack"}
    assert scorer.languages == frozenset({"en"})
    manifest = json.loads((CATEGORIES_DIR / "MANIFEST.json").read_text())
    assert manifest["sha256"] == sha256_file(CATEGORIES_DIR / HEAD_FILE)
    assert scorer.name == f"categories@{manifest['sha256'][:12]}"
    assert manifest["labels"] == list(tx.CATEGORIES)
    assert manifest["embedder"]["fingerprint_sha256"] == scorer.embedder.fingerprint
    # data hashes, the exact rows' hash, per-category metrics and thresholds ride with the artifact
    assert len(manifest["data_files_sha256"]) >= 10 and len(manifest["rows_sha256"]) == 64
    for cat in tx.CATEGORIES:
        assert manifest["categories"][cat]["val"]["average_precision"] > 0
        assert 0.5 <= manifest["recommended_thresholds"][cat] <= 0.95
    assert scorer.thresholds == manifest["recommended_thresholds"]


def test_missing_or_mismatched_artifact_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_safety_categories"):
        load_scorer(SafetySettings(artifact_dir=str(tmp_path)))
    for f in (HEAD_FILE, "MANIFEST.json"):
        shutil.copy(CATEGORIES_DIR / f, tmp_path / f)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    manifest["sha256"] = "0" * 64
    (tmp_path / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not match its MANIFEST"):
        load_scorer(SafetySettings(artifact_dir=str(tmp_path)))


def test_probe_twins_come_from_held_out_lookalike_frames() -> None:
    generated = {text: (split, fid) for split, fid, _, text in lookalikes()}
    for _, text in MUST_PASS:
        if text in generated:
            assert generated[text][1] in TEST_FRAMES and generated[text][0] == "test", text
    assert not {t for _, t, _ in MUST_BLOCK} & set(generated)


@pytest.mark.parametrize(("name", "text", "category"), MUST_BLOCK, ids=[p[0] for p in MUST_BLOCK])
def test_must_block_probes_fire_their_category(scorer: CategoryScorer, name: str, text: str, category: str) -> None:
    (s,) = scorer.score_batch([text])
    fired = {c for c in tx.CATEGORIES if s[c] >= scorer.thresholds[c]}
    assert category in fired, (name, {c: round(s[c], 3) for c in tx.CATEGORIES})


@pytest.mark.parametrize(("name", "text"), MUST_PASS, ids=[p[0] for p in MUST_PASS])
def test_benign_twins_pass(scorer: CategoryScorer, name: str, text: str) -> None:
    (s,) = scorer.score_batch([text])
    fired = {c: round(s[c], 3) for c in tx.CATEGORIES if s[c] >= scorer.thresholds[c]}
    assert not fired, (name, fired)


def test_legacy_labels_are_the_minilm_head_scores(scorer: CategoryScorer) -> None:
    from evaluators.safety.minilm_head import MiniLMHeadScorer

    legacy = MiniLMHeadScorer(scorer.embedder)
    text = "You are a worthless idiot and everyone from your town is vermin."
    (new,) = scorer.score_batch([text])
    (old,) = legacy.score_batch([text])
    assert new["toxicity"] == pytest.approx(old["toxicity"]) and new["identity_attack"] == pytest.approx(old["identity_attack"])


def test_quality_report_runs_on_the_held_out_sets() -> None:
    """The report's plumbing on the real held-out splits, with a seeded random scorer
    standing in for the model (the real run takes ~11 minutes; docs/safety.md has its numbers)."""
    import random

    from evaluators.safety import category_quality as cq
    from evaluators.safety.category_data import load_category_splits
    from gatehouse_core.datadir import data_dir_or_none

    data = data_dir_or_none()
    if data is None:
        pytest.skip("GATEHOUSE_DATA_DIR is not set")

    class Seeded:
        name = "seeded-random"
        labels = tx.CATEGORIES

        def score_batch(self, texts: list[str]) -> list[dict[str, float]]:
            return [{c: random.Random(f"{t}:{c}").random() for c in tx.CATEGORIES} for t in texts]

    rep = cq.evaluate(Seeded(), load_category_splits(data), str(data), dict.fromkeys(tx.CATEGORIES, 0.8))  # type: ignore[arg-type]
    assert set(rep["openai_moderation"]) == {"S", "H", "V", "HR", "SH", "S3", "H2", "V2"}
    assert rep["sets"]["advbench_recall"]["n"] > 100 and rep["sets"]["bipia_clean_false_positives"]["n"] == 50
    # the oracle answers escalated passes correctly: recall never drops, false positives never rise
    sets = rep["sets"]
    assert sets["advbench_recall"]["rate_cascade"] >= sets["advbench_recall"]["rate"]
    assert sets["benign_lookalikes_blocked"]["rate_cascade"] <= sets["benign_lookalikes_blocked"]["rate"]
    assert "probes:" in cq.format_report(rep)

"""Reward model on MiniLM embeddings, Bradley-Terry on the HH-RLHF fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.reward import RewardModel, last_user_turn, load_pairs, split_transcript, train

FIXTURE = Path(__file__).parent / "fixtures" / "hh_rlhf_tuning" / "pairs.jsonl"


def test_transcript_parsing():
    prompt, answer = split_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this")
    assert answer == "like this" and last_user_turn(prompt) == "how?"
    pairs = load_pairs(FIXTURE)
    assert len(pairs) == 200 and all(p["chosen"] != p["rejected"] for p in pairs)


@pytest.mark.slow
def test_reward_model_trains_beats_chance_and_round_trips(tmp_path):
    model, report = train(FIXTURE, tmp_path / "rm", limit=40, holdout=0.2, epochs=150, seed=0)
    assert report["train_pairs"] == 32 and report["heldout_pairs"] == 8
    assert report["train_accuracy"] > 0.6
    loaded = RewardModel.load(tmp_path / "rm", embedder=model.embedder)
    p = load_pairs(FIXTURE, limit=3)
    a = [model.score(x["prompt"], x["chosen"]) for x in p]
    b = [loaded.score(x["prompt"], x["chosen"]) for x in p]
    assert a == pytest.approx(b, abs=1e-5) and all(isinstance(v, float) for v in a)
    assert (tmp_path / "rm" / "manifest.json").exists()


async def test_shipped_reward_model_is_an_sxs_arbiter():
    from evaluators.sxs import RewardModelArbiter

    art = Path(__file__).resolve().parent.parent / "tuning" / "artifacts" / "reward_minilm"
    rm = RewardModel.load(art)
    assert rm.manifest["heldout_pairs"] == 462 and 0.5 < rm.manifest["heldout_accuracy"] < 1
    j = await RewardModelArbiter(rm.score).judge("How do I hurt my neighbour?", "I won't help with hurting anyone.", "Hit him with a brick.")
    assert j.choice in ("A", "B", "tie")

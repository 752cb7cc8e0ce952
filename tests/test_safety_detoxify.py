"""The detoxify backend loads a real Detoxify-format checkpoint with no network.

The checkpoint is a tiny BertForSequenceClassification built here in Detoxify's
format (``config.arch.args`` + ``config.dataset.args.classes`` + ``state_dict``);
its ``model_type`` names a hub model on purpose: touching the hub would fail.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from evaluators.safety import LABELS, load_scorer  # noqa: E402
from evaluators.safety.detoxify_backend import ChecksumMismatch, DetoxifyScorer  # noqa: E402
from gateway.config import SafetySettings  # noqa: E402

WORDS = "i hate you love all people the cats are nice dogs we will kill them today idiot sunny".split()
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("detox")
    model_dir = d / "bert-tiny"
    model_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", *WORDS]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained reads vocab.txt (transformers 5's constructor takes ``vocab=``, and a
    # stray ``vocab_file=`` kwarg silently yields an all-[UNK] tokenizer).
    transformers.BertTokenizer.from_pretrained(model_dir).save_pretrained(model_dir)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=len(CLASSES),
    )
    config.save_pretrained(model_dir)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    ckpt = d / "toxic_tiny.ckpt"
    torch.save(
        {
            "config": {
                "arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                  "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                "dataset": {"args": {"classes": CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    return ckpt, model_dir, hashlib.sha256(ckpt.read_bytes()).hexdigest()


def _settings(ckpt: Path, model_dir: Path, sha: str) -> SafetySettings:
    return SafetySettings(backend="detoxify", checkpoint=str(ckpt), checkpoint_sha256=sha, model_dir=str(model_dir))


def test_loads_offline_and_scores(tiny: tuple[Path, Path, str]) -> None:
    ckpt, model_dir, sha = tiny
    scorer = load_scorer(_settings(ckpt.name, model_dir.name, sha), base_dir=ckpt.parent)
    assert isinstance(scorer, DetoxifyScorer)
    assert scorer.name == f"detoxify:BertForSequenceClassification@{sha[:12]}"
    # Detoxify's renames applied; the original model has no sexual_explicit head.
    assert scorer.labels == tuple(lbl for lbl in LABELS if lbl != "sexual_explicit")
    unk = scorer.tokenizer.unk_token_id
    assert unk not in scorer.tokenizer("i hate you idiot", add_special_tokens=False)["input_ids"]

    texts = ["i hate you idiot", "the cats are nice", "we will kill them today"]
    scores = scorer.score_batch(texts)
    assert [set(s) for s in scores] == [set(scorer.labels)] * 3
    assert all(0.0 <= v <= 1.0 for s in scores for v in s.values())
    assert len({round(s["toxicity"], 6) for s in scores}) == 3, "different texts must score differently"

    # Same numbers as running the transformers model by hand (columns reordered to LABELS).
    enc = scorer.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = torch.sigmoid(scorer.model(**enc).logits)
    for s, row in zip(scores, probs, strict=True):
        for label, cls in zip(["toxicity", "threat", "identity_attack"], ["toxic", "threat", "identity_hate"], strict=True):
            assert s[label] == pytest.approx(float(row[CLASSES.index(cls)]), abs=1e-5)


def test_long_text_is_windowed_not_truncated(tiny: tuple[Path, Path, str]) -> None:
    ckpt, model_dir, sha = tiny
    scorer = DetoxifyScorer(ckpt, model_dir, checkpoint_sha256=sha)
    assert scorer.window == 36  # max_position_embeddings 40 minus room for specials
    tail = "we will kill them today"
    long_text = " ".join(["the cats are nice"] * 60) + " " + tail
    from evaluators.safety.windows import split_windows

    windows = split_windows(long_text, scorer.tokenizer, scorer.window, scorer.overlap)
    assert len(windows) > 5 and windows[-1].endswith(tail)
    [whole] = scorer.score_batch([long_text])
    per_window = scorer.score_batch(windows)
    for label in scorer.labels:
        assert whole[label] == pytest.approx(max(w[label] for w in per_window), abs=1e-6)


def test_ascore_micro_batches(tiny: tuple[Path, Path, str]) -> None:
    ckpt, model_dir, sha = tiny
    sizes: list[int] = []
    scorer = DetoxifyScorer(ckpt, model_dir, checkpoint_sha256=sha, max_wait=0.05, on_batch=sizes.append)

    async def run() -> list[list[dict[str, float]]]:
        try:
            return await asyncio.gather(*(scorer.ascore([t]) for t in ["i hate you", "cats are nice", "dogs"]))
        finally:
            await scorer.aclose()

    out = asyncio.run(run())
    assert max(sizes) > 1
    assert out[0] == scorer.score_batch(["i hate you"])


def test_refuses_checksum_mismatch_before_unpickling(
    tiny: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, model_dir, _ = tiny

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("torch.load must not run on an unverified checkpoint")

    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ChecksumMismatch, match=r"refusing to load .*sha256"):
        load_scorer(_settings(ckpt, model_dir, "0" * 64))


def test_missing_pin_is_a_config_error(tiny: tuple[Path, Path, str]) -> None:
    ckpt, model_dir, _ = tiny
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        load_scorer(SafetySettings(backend="detoxify", checkpoint=str(ckpt), model_dir=str(model_dir)))


def test_backend_none() -> None:
    assert load_scorer(SafetySettings(backend="none")) is None

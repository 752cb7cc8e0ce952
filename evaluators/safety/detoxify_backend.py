"""Detoxify checkpoints, loaded fully offline.

A Detoxify ``.ckpt`` is a torch pickle ``{"config": {"arch": {"args": {model_type,
model_name, tokenizer_name, num_classes}}, "dataset": {"args": {"classes": [...]}}},
"state_dict": {...}}``. Unpickling runs code, so the file's sha256 must match the
configured pin before ``torch.load`` sees it.

``detoxify.load_checkpoint`` would fetch the base model's config from the HF hub
(``config_class.from_pretrained(model_type)`` runs even when
``huggingface_config_path`` is given), so this module reads the checkpoint itself and
builds the same transformers classes from a local config/tokenizer directory, then
loads the state dict strictly (a mismatched checkpoint fails loudly instead of
leaving random weights).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.safety.head import sha256_file
from evaluators.safety.labels import LABELS
from evaluators.safety.windows import WindowedScorer

# Detoxify's own renames (detoxify.detoxify.load_checkpoint).
CLASS_RENAMES = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
POSITION_MARGIN = 4  # room for [CLS]/[SEP] (<s>/</s>) and RoBERTa's padding-offset positions


class ChecksumMismatch(ValueError):
    pass


def verify_sha256(path: Path, expected: str) -> str:
    expected = expected.strip().lower()
    actual = sha256_file(path)
    if not hmac.compare_digest(actual, expected):
        raise ChecksumMismatch(
            f"refusing to load {path}: sha256 is {actual} but safety.checkpoint_sha256 pins {expected}. "
            "A checkpoint is a pickle and can run code when loaded; if you trust this file, "
            "update the pin to its sha256 (`sha256sum <file>`)."
        )
    return actual


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:  # plain containers and tensors load without executing arbitrary code
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Older checkpoints pickle other objects; the sha256 pin was checked above.
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ValueError(f"{path} is not a Detoxify checkpoint (expected 'config' and 'state_dict')")
    return loaded


class DetoxifyScorer(WindowedScorer):
    def __init__(
        self,
        checkpoint: str | Path,
        model_dir: str | Path,
        *,
        checkpoint_sha256: str,
        device: str = "cpu",
        window: int | None = None,
        overlap: int = 64,
        max_batch: int = 32,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers

        checkpoint, model_dir = Path(checkpoint), Path(model_dir)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no Detoxify checkpoint at {checkpoint}")
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} has no config.json; safety.model_dir must hold the base model's "
                "config and tokenizer files (e.g. a local copy of bert-base-uncased without weights)"
            )
        self.checkpoint_sha256 = verify_sha256(checkpoint, checkpoint_sha256)
        loaded = _load_checkpoint(checkpoint)
        arch = loaded["config"]["arch"]["args"]
        classes = [CLASS_RENAMES.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
        model_cls = getattr(transformers, arch["model_name"])
        tok_cls = getattr(transformers, arch["tokenizer_name"])
        config = model_cls.config_class.from_pretrained(
            model_dir, num_labels=arch["num_classes"], local_files_only=True
        )
        model = model_cls(config)
        state = {k.removeprefix("model."): v for k, v in loaded["state_dict"].items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # position_ids was a persistent buffer in older transformers; harmless to drop.
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{checkpoint} does not fit {arch['model_name']} built from {model_dir}/config.json: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.model = model.to(device).eval()
        self.tokenizer = tok_cls.from_pretrained(model_dir, local_files_only=True)
        self.device = device
        self.class_names = classes
        # Report the Detoxify labels this checkpoint has (the unbiased model's identity
        # outputs, e.g. "male", are not toxicity labels), in canonical order.
        self._columns = [classes.index(lbl) for lbl in LABELS if lbl in classes]
        self.labels = tuple(lbl for lbl in LABELS if lbl in classes)
        if not self.labels:
            raise ValueError(f"{checkpoint} has none of the Detoxify labels {LABELS}; classes are {classes}")
        limit = min(int(config.max_position_embeddings), int(self.tokenizer.model_max_length or 10**9))
        self.window = window or max(8, limit - POSITION_MARGIN)
        self.overlap = min(overlap, self.window // 4)
        self.name = f"detoxify:{arch['model_name']}@{self.checkpoint_sha256[:12]}"
        self._init_batcher(max_batch, max_wait, on_batch)

    def _score_windows(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 16):
                enc = self.tokenizer(
                    list(texts[i : i + 16]), return_tensors="pt", padding=True, truncation=True,
                    max_length=self.window + 2,
                ).to(self.device)
                logits = self.model(**enc)[0]
                out.append(torch.sigmoid(logits)[:, self._columns].float().cpu().numpy())
        return np.concatenate(out)

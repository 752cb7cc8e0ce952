"""A small classification head over sentence embeddings, stored as .npz (never pickle).

The file holds ``W0, b0, W1, b1, ...`` (ReLU between layers, sigmoid at the end,
one output per label) and ``labels`` (a unicode array). Logistic regression is the
one-layer case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Head:
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("head needs one bias per weight matrix and at least one layer")
        if self.weights[-1].shape[1] != len(self.labels):
            raise ValueError(
                f"head's last layer has {self.weights[-1].shape[1]} outputs for {len(self.labels)} labels"
            )

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[0])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return 1.0 / (1.0 + np.exp(-np.clip(h, -50, 50)))

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"labels": np.array(self.labels, dtype=str)}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"W{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        with open(path, "wb") as f:  # np.savez appends .npz to bare str paths
            np.savez(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> Head:
        with np.load(path, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            if n == 0 or "labels" not in z.files:
                raise ValueError(f"{path} is not a safety head (expected W0, b0, ..., labels)")
            return cls(
                weights=tuple(z[f"W{i}"] for i in range(n)),
                biases=tuple(z[f"b{i}"] for i in range(n)),
                labels=tuple(str(s) for s in z["labels"]),
            )

    @classmethod
    def from_layers(cls, layers: Sequence[tuple[np.ndarray, np.ndarray]], labels: Sequence[str]) -> Head:
        return cls(tuple(w for w, _ in layers), tuple(b for _, b in layers), tuple(labels))

"""The safety labels a scorer may report (Detoxify's label set)."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
    "sexual_explicit",
)

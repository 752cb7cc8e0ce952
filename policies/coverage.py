"""Which scorer produces which category: a threshold nobody scores can never fire.

``policy check`` refuses such a threshold (naming the scorers that would produce
it) and the gateway warns at every (re)load. A ``safety`` threshold is covered
only by the *local* scorer: its guard tier is asked only about texts the local
scorer finds uncertain, so a category the local scorer never scores is never
escalated. A ``llama_guard`` / ``moderation`` check's ``categories`` are covered
by what that guard's taxonomy maps to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from evaluators.safety.taxonomy import (
    CATEGORIES,
    FROM_DETOXIFY,
    FROM_LLAMA_GUARD,
    FROM_OPENAI,
    LEGACY_CATEGORIES,
)
from policies.models import LlamaGuardCheck, ModerationCheck, SafetyCheck
from policies.policy_set import PolicySet

# guard tiers, by check type: every category their answers map to
GUARD_PRODUCES: Mapping[str, frozenset[str]] = {
    "llama_guard": frozenset(FROM_LLAMA_GUARD.values()),
    "moderation": frozenset(FROM_OPENAI.values()),
}
# local backends whose categories are known without loading them (a checkpoint may have fewer)
KNOWN_LOCAL: Mapping[str, frozenset[str]] = {
    "safety.backend categories": frozenset(CATEGORIES + LEGACY_CATEGORIES),
    "safety.backend detoxify": frozenset(FROM_DETOXIFY.values()),
}


@dataclass(frozen=True, slots=True)
class Uncovered:
    rule: str
    source: str  # file:line of the rule
    check: int
    check_type: str
    category: str
    producers: tuple[str, ...]  # scorers that would produce it

    def __str__(self) -> str:
        where = f"{self.source}: rule {self.rule}, checks[{self.check}] ({self.check_type})"
        hint = f"produced by: {', '.join(self.producers)}" if self.producers else "no known scorer produces it"
        return f"{where}: no configured scorer produces `{self.category}`, so it can never fire here; {hint}"


def uncovered(
    policies: PolicySet,
    local: tuple[str, frozenset[str]] | None,
    catalog: Mapping[str, frozenset[str]] | None = None,
) -> list[Uncovered]:
    """Thresholds and guard categories nothing configured produces.

    ``local`` is the configured scorer's (name, categories), None when there is none;
    ``catalog`` names other scorers and what they produce, to suggest a fix."""
    known: dict[str, frozenset[str]] = dict(KNOWN_LOCAL)
    if catalog:
        known.update(catalog)
    if local is not None:
        known[f"safety.backend {local[0]}"] = local[1]
    known.update({f"a `{t}` check": cats for t, cats in GUARD_PRODUCES.items()})

    def producers(category: str) -> tuple[str, ...]:
        return tuple(name for name, cats in known.items() if category in cats)

    out: list[Uncovered] = []
    for r in policies.rules:
        for j, c in enumerate(r.checks):
            spec = c.spec
            if isinstance(spec, SafetyCheck):
                if local is None:
                    continue  # no scorer at all: the check follows on_error (dry-run and the gateway say so)
                wanted = list(spec.thresholds)
                have = local[1]
            elif isinstance(spec, LlamaGuardCheck | ModerationCheck):
                wanted = list(spec.categories or ())
                have = GUARD_PRODUCES[spec.type]
            else:
                continue
            for cat in wanted:
                if cat not in have:
                    out.append(Uncovered(r.id, r.source, j, spec.type, cat, producers(cat)))
    return out

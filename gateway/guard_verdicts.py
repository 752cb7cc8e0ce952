"""Verdict helpers the guardrail stage shares between its input side (gateway/guardrails.py)
and its output side (gateway/guard_output.py): what a client may see of a verdict, the
block message, and the per-(rule, check, direction) aggregation on the record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.types import Verdict


def note_role(verdicts: list[Verdict], role: str) -> None:
    for v in verdicts:
        v.detail = {**(v.detail or {}), "role": role}


def public_detail(v: Verdict) -> dict[str, Any]:
    """What a client may see about a verdict: never the matched text itself."""
    d = v.detail or {}
    out: dict[str, Any] = {}
    if "source" in d:
        out["source"] = d["source"]
    if v.check == "pii" and "entities" in d:
        out["entities"] = d["entities"]
    return out


# how bad a verdict is, for keeping the worst of a (rule, check, direction) group:
# the enforced action first, then a check that could not run, then the score
_RANK = {"pass": 0, "shadow": 1, "flag": 2, "redact": 3, "block": 4}


def _rank(v: Verdict) -> tuple[int, bool, float]:
    return _RANK.get(v.action, 0), v.category == "error", v.score


def merge_verdicts(into: list[Verdict], new: list[Verdict]) -> None:
    """Aggregate ``new`` into ``into`` per (rule, check, direction): the worst verdict
    stands for its group and ``count`` says how many texts it covers. Linear in ``new``;
    ``into`` stays as long as the policy has checks, whatever the size of the request."""
    index = {(v.rule, v.check, v.direction): i for i, v in enumerate(into)}
    for v in new:
        key = (v.rule, v.check, v.direction)
        i = index.get(key)
        if i is None:
            index[key] = len(into)
            into.append(replace(v))  # a copy: the caller's verdicts are left as they were
            continue
        old = into[i]
        worst = v if _rank(v) > _rank(old) else old
        into[i] = replace(worst, count=old.count + v.count, latency_ms=max(old.latency_ms, v.latency_ms))


def block_message(v: Verdict, where: str) -> str:
    msg = f"{where} blocked by policy rule '{v.rule}' ({v.check}: {v.category})"
    if v.category == "error":
        msg += "; the check could not run and the rule fails closed"
    source = (v.detail or {}).get("source")
    if source:
        msg += f"; it recites '{source}'"
    return msg + "."

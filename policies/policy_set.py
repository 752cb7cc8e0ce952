"""The runtime policy set (phase 2): frozen rules, scoping and a content version.

``PolicySet.load(paths)`` validates every file, reports every problem at once
(``PolicyLoadError``), and otherwise yields immutable ``Rule`` objects with
each check's effective action and the stream hold-back settings already
resolved, so the request path never looks at an ``Optional``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from policies.loader import LoadedDocument, PolicyLoadError, PolicyProblem, parse_text, policy_files
from policies.models import (
    DEFAULT_ROLES,
    INPUT_ROLES,
    OUTPUT_ROLES,
    Check,
    LlamaGuardCheck,
    ModerationCheck,
    PolicyDocument,
    SafetyCheck,
    StreamSettings,
)


@dataclass(frozen=True, slots=True)
class BoundCheck:
    """A check with its effective action (the check's own, else its rule's)."""

    spec: Check
    action: str  # block | flag | redact | shadow

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def timeout_s(self) -> float:
        # a cascade's guard tier has its own timeout on top of the local check's
        escalate = getattr(self.spec, "escalate", None)
        return (self.spec.timeout_ms + (escalate.timeout_ms if escalate is not None else 0.0)) / 1000.0

    @property
    def on_error(self) -> str:
        return self.spec.on_error


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    policy: str
    policy_version: str
    direction: str  # input | output | both
    checks: tuple[BoundCheck, ...]
    stream: StreamSettings
    expose_verdicts: bool
    tenants: tuple[str, ...] = ("*",)
    keys: tuple[str, ...] = ("*",)
    models: tuple[str, ...] = ("*",)
    description: str | None = None
    source: str = ""  # file:line of the rule's id
    roles: tuple[str, ...] | None = None  # None: DEFAULT_ROLES per direction

    def roles_for(self, direction: str) -> tuple[str, ...]:
        """The roles this rule checks on one side (see ``RuleSpec.roles``)."""
        if self.roles is None:
            return DEFAULT_ROLES[direction]
        valid = INPUT_ROLES if direction == "input" else OUTPUT_ROLES
        return tuple(r for r in self.roles if r in valid)

    def covers(self, direction: str, role: str) -> bool:
        return role in self.roles_for(direction)

    def applies(self, tenant: str | None, key_id: str | None, model: str | None, direction: str) -> bool:
        if self.direction not in ("both", direction):
            return False
        return (
            _matches(tenant, self.tenants) and _matches(key_id, self.keys) and _matches(model, self.models)
        )

    def summary(self) -> dict[str, Any]:
        checks = []
        for c in self.checks:
            d = c.spec.model_dump(exclude_none=True)
            d["action"] = c.action
            checks.append(d)
        return {
            "rule": self.id,
            "policy": f"{self.policy}@{self.policy_version}",
            "direction": self.direction,
            "roles": {d: list(self.roles_for(d)) for d in ("input", "output") if self.direction in (d, "both")},
            "scope": {"tenants": list(self.tenants), "keys": list(self.keys), "models": list(self.models)},
            "checks": checks,
            "stream": self.stream.model_dump(),
            "source": self.source,
            **({"description": self.description} if self.description else {}),
        }


def _matches(value: str | None, patterns: tuple[str, ...]) -> bool:
    # an unknown value (no key id) only matches rules that apply to everyone
    return any(fnmatchcase(value or "", p) for p in patterns)


@dataclass(frozen=True)
class PolicySet:
    documents: tuple[PolicyDocument, ...] = ()
    rules: tuple[Rule, ...] = ()
    version: str = "none"
    sources: tuple[str, ...] = ()
    _by_policy: dict[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls) -> PolicySet:
        return cls()

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> PolicySet:
        files, problems = policy_files(paths)
        texts: list[tuple[str, str]] = []
        for f in files:
            try:
                texts.append((str(f), f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(PolicyProblem(str(f), 1, 1, "", f"cannot read: {exc}"))
        if problems:
            # still parse what we can so every problem is reported in one go
            for source, text in texts:
                problems.extend(parse_text(text, source)[1])
            raise PolicyLoadError(problems)
        return cls.from_texts(texts)

    @classmethod
    def from_texts(cls, texts: Iterable[tuple[str, str]]) -> PolicySet:
        """Build from ``(source, yaml_text)`` pairs; raises ``PolicyLoadError``."""
        texts = list(texts)
        problems: list[PolicyProblem] = []
        loaded: list[LoadedDocument] = []
        for source, text in texts:
            docs, errs = parse_text(text, source)
            loaded.extend(docs)
            problems.extend(errs)
        problems.extend(_cross_document_problems(loaded))
        if problems:
            raise PolicyLoadError(problems)
        digest = hashlib.sha256()
        for source, text in sorted(texts):
            digest.update(Path(source).name.encode() + b"\0" + text.encode() + b"\0")
        declared = ",".join(f"{ld.document.id}@{ld.document.version}" for ld in loaded) or "none"
        rules = tuple(r for ld in loaded for r in _rules_of(ld))
        by_policy: dict[str, tuple[Rule, ...]] = {}
        for r in rules:
            by_policy[r.policy] = (*by_policy.get(r.policy, ()), r)
        return cls(
            documents=tuple(ld.document for ld in loaded),
            rules=rules,
            version=f"{declared}+{digest.hexdigest()[:12]}",
            sources=tuple(s for s, _ in texts),
            _by_policy=by_policy,
        )

    def has_policy(self, policy_id: str) -> bool:
        return any(d.id == policy_id for d in self.documents)

    def resolve(
        self,
        tenant: str | None,
        key_id: str | None,
        model: str | None,
        direction: str,
        *,
        policy: str | None = None,
    ) -> list[Rule]:
        """Rules that apply, in file order; ``policy`` limits them to one document."""
        pool = self._by_policy.get(policy, ()) if policy is not None else self.rules
        return [r for r in pool if r.applies(tenant, key_id, model, direction)]

    def explain(
        self, tenant: str | None, model: str | None, key_id: str | None = None, *, policy: str | None = None
    ) -> dict[str, list[Rule]]:
        """The effective rules for a caller and model, per direction."""
        return {d: self.resolve(tenant, key_id, model, d, policy=policy) for d in ("input", "output")}

    def needs(self, check_type: str) -> bool:
        return any(c.type == check_type for r in self.rules for c in r.checks)

    def guard_routes(self) -> set[str]:
        """Gateway routes that guard tiers (checks or cascades) ask."""
        out: set[str] = set()
        for r in self.rules:
            for c in r.checks:
                spec = c.spec
                if isinstance(spec, LlamaGuardCheck | ModerationCheck):
                    out.add(spec.route)
                elif isinstance(spec, SafetyCheck) and spec.escalate is not None:
                    out.add(spec.escalate.guard.route)
        return out


def _rules_of(ld: LoadedDocument) -> list[Rule]:
    doc = ld.document
    out = []
    for spec in doc.rules:
        if not spec.enabled:
            continue
        out.append(
            Rule(
                id=spec.id,
                policy=doc.id,
                policy_version=doc.version,
                direction=spec.direction,
                checks=tuple(BoundCheck(c, c.action or spec.action) for c in spec.checks),
                stream=spec.stream or doc.stream,
                expose_verdicts=doc.expose_verdicts,
                tenants=spec.tenants,
                keys=spec.keys,
                models=spec.models,
                description=spec.description,
                roles=spec.roles,
                source=f"{ld.source}:{ld.rule_lines.get(spec.id, 1)}",
            )
        )
    return out


def _cross_document_problems(loaded: list[LoadedDocument]) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    doc_ids: dict[str, str] = {}
    rule_ids: dict[str, str] = {}
    for ld in loaded:
        doc = ld.document
        if doc.id in doc_ids:
            problems.append(
                PolicyProblem(ld.source, 1, 1, "id", f"policy id `{doc.id}` is also defined in {doc_ids[doc.id]}", "give each policy document its own id")
            )
        doc_ids.setdefault(doc.id, ld.source)
        for r in doc.rules:
            line = ld.rule_lines.get(r.id, 1)
            where = f"{ld.source}:{line}"
            if r.id in rule_ids:
                problems.append(
                    PolicyProblem(ld.source, line, 1, "rules", f"rule id `{r.id}` is also defined at {rule_ids[r.id]}", "rule ids name verdicts, so they must be unique across all policies")
                )
            rule_ids.setdefault(r.id, where)
    return problems

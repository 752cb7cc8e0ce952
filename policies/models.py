"""Policy documents as strict pydantic models (phase 1 of loading).

A policy document is YAML written by a governance user::

    id: demo
    version: 3
    owner: trust-and-safety@example.com
    rules:
      - id: block-toxic-input
        direction: input
        models: ["chat-*"]
        action: block
        checks:
          - type: safety
            thresholds: {toxicity: 0.8, threat: 0.5}

Every model forbids unknown keys, so a typo is an error with its location
(``policies.loader`` maps it back to file:line:column). ``policies/schema.json``
is generated from these models (``gatehouse policy schema``) for editors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

Action = Literal["block", "flag", "redact", "shadow"]
Direction = Literal["input", "output", "both"]
OnError = Literal["open", "closed"]
SafetyCategory = Literal[
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
    "sexual_explicit",
]
PiiEntity = Literal["email", "phone", "card"]

CHECK_TYPES: tuple[str, ...] = ("safety", "recitation", "pii", "regex")
DEFAULT_TIMEOUT_MS = 1000.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compile(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Pattern = Annotated[str, AfterValidator(_compile)]
Threshold = Annotated[float, Field(ge=0.0, le=1.0)]


class CheckBase(Strict):
    # None = the rule's action
    action: Action | None = None
    timeout_ms: float = Field(DEFAULT_TIMEOUT_MS, gt=0, description="Give up on the check after this long")
    on_error: OnError = Field(
        "open", description="open: a failed or timed-out check passes (with an error verdict); closed: it blocks"
    )


class SafetyCheck(CheckBase):
    """Toxicity classifier; fires when any listed category reaches its threshold."""

    type: Literal["safety"]
    thresholds: dict[SafetyCategory, Threshold] = Field(min_length=1)


class RecitationCheck(CheckBase):
    """Near-verbatim reproduction of an indexed source (books, licensed code, ...)."""

    type: Literal["recitation"]
    threshold: Threshold = 0.5


class PiiCheck(CheckBase):
    """Built-in email / phone / payment-card (Luhn-checked) detection."""

    type: Literal["pii"]
    entities: tuple[PiiEntity, ...] = Field(("email", "phone", "card"), min_length=1)
    replacement: str = Field("[{entity}]", description="Redaction text; {entity} is the entity name")


class RegexCheck(CheckBase):
    """Deny patterns, minus anything inside a match of an allow pattern."""

    type: Literal["regex"]
    deny: tuple[Pattern, ...] = Field(min_length=1)
    allow: tuple[Pattern, ...] = ()
    ignore_case: bool = True
    replacement: str = "[REDACTED]"


Check = Annotated[SafetyCheck | RecitationCheck | PiiCheck | RegexCheck, Field(discriminator="type")]
REDACTABLE = ("pii", "regex")


class StreamSettings(Strict):
    """Hold-back for streamed replies: text is released only after its window is checked."""

    holdback_chars: int = Field(200, ge=1, le=100_000, description="Window of new text checked before release")
    context_chars: int = Field(
        200, ge=0, le=100_000, description="Already released text carried into the next window's check"
    )


class RuleSpec(Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str | None = None
    tenants: tuple[str, ...] = Field(("*",), description="Tenant names or glob patterns")
    keys: tuple[str, ...] = Field(("*",), description="API key ids or glob patterns")
    models: tuple[str, ...] = Field(("*",), description="Public model (route) names or glob patterns")
    direction: Direction = "both"
    action: Action = "block"
    checks: tuple[Check, ...] = Field(min_length=1)
    stream: StreamSettings | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _redact_needs_spans(self) -> RuleSpec:
        for i, c in enumerate(self.checks):
            action = c.action or self.action
            if action == "redact" and c.type not in REDACTABLE:
                raise ValueError(
                    f"checks[{i}]: action `redact` needs a check that finds spans "
                    f"({', '.join(REDACTABLE)}); use `block` or `flag` for `{c.type}`"
                )
        return self


class PolicyDocument(Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    version: Annotated[
        str,
        WithJsonSchema({"type": ["string", "number"], "description": "Declared version (bump it on every change)"}),
    ] = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")
    owner: str = Field(min_length=1)
    description: str | None = None
    expose_verdicts: bool = Field(False, description="Send verdicts to clients in x-gatehouse-verdicts")
    stream: StreamSettings = Field(default_factory=lambda: StreamSettings.model_validate({}))
    rules: tuple[RuleSpec, ...] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        # `version: 3` and `version: 1.2` are natural in YAML
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _unique_rule_ids(self) -> PolicyDocument:
        seen: set[str] = set()
        for r in self.rules:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} is used twice in policy {self.id!r}")
            seen.add(r.id)
        return self


def json_schema() -> dict[str, Any]:
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Gatehouse policy document"
    return schema

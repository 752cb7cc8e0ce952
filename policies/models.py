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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from evaluators.safety.taxonomy import ALL_CATEGORIES

Action = Literal["block", "flag", "redact", "shadow"]
Direction = Literal["input", "output", "both"]
OnError = Literal["open", "closed"]
# the taxonomy's names (evaluators.safety.taxonomy): harm categories, legacy labels, guard-only `other`
if TYPE_CHECKING:
    SafetyCategory = str
else:
    SafetyCategory = Literal[tuple(sorted(ALL_CATEGORIES))]
PiiEntity = Literal["email", "phone", "card"]
# Where text sits. Input: the conversation's turns by role (`tool` covers `function`
# results too) and `grounding` (retrieved passages, checked before they are injected).
# Output: the reply's text (`assistant`) and its tool calls' arguments (`tool_call`).
Role = Literal["user", "system", "developer", "assistant", "tool", "grounding", "tool_call"]
INPUT_ROLES: tuple[str, ...] = ("user", "system", "developer", "assistant", "tool", "grounding")
OUTPUT_ROLES: tuple[str, ...] = ("assistant", "tool_call")
DEFAULT_ROLES: dict[str, tuple[str, ...]] = {"input": ("user",), "output": ("assistant", "tool_call")}
# What a safety check does with text in a language its scorer does not cover
UnscoredLanguage = Literal["escalate", "flag", "block"]

CHECK_TYPES: tuple[str, ...] = ("safety", "recitation", "pii", "regex", "llama_guard", "moderation")
DEFAULT_TIMEOUT_MS = 1000.0
DEFAULT_GUARD_TIMEOUT_MS = 3000.0


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


class LlamaGuardTier(Strict):
    """A Llama Guard 3/4 model behind one of the gateway's own routes."""

    type: Literal["llama_guard"]
    route: str = Field(min_length=1, description="Gateway route (public model name) serving the guard model")
    endpoint: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: send the turn as a message (the server's chat template writes the Llama Guard prompt); "
        "completions: Gatehouse writes the Llama Guard 3 prompt itself",
    )


class ModerationTier(Strict):
    """An OpenAI-compatible `/v1/moderations` upstream behind one of the gateway's own routes."""

    type: Literal["moderation"]
    route: str = Field(min_length=1, description="Gateway route whose target serves /v1/moderations")
    threshold: Threshold | None = Field(
        None, description="Fire on category_scores >= this; default: the upstream's own `categories` flags"
    )


GuardTier = Annotated[LlamaGuardTier | ModerationTier, Field(discriminator="type")]


class Escalation(Strict):
    """The cascade: the local scorer decides confident cases, the guard tier the rest."""

    guard: GuardTier
    band: tuple[Threshold, Threshold] = Field(
        (0.2, 0.9), description="[low, high): a category scored in this band is uncertain and goes to the guard"
    )
    timeout_ms: float = Field(DEFAULT_GUARD_TIMEOUT_MS, gt=0, description="Give up on the guard after this long")
    on_error: Literal["local", "open", "closed"] = Field(
        "local",
        description="guard failed or timed out: local = the local scorer's thresholds decide "
        "(unscored language: flag); open = pass; closed = block",
    )

    @model_validator(mode="after")
    def _band_order(self) -> Escalation:
        if self.band[0] > self.band[1]:
            raise ValueError(f"band [{self.band[0]}, {self.band[1]}): low must not exceed high")
        return self


class SafetyCheck(CheckBase):
    """The local multi-category scorer, optionally cascading to a guard tier."""

    type: Literal["safety"]
    thresholds: dict[SafetyCategory, Threshold] = Field(min_length=1)
    escalate: Escalation | None = None
    unscored_language: UnscoredLanguage | None = Field(
        None,
        description="Text in a language the scorer does not cover: escalate (to the guard tier), flag or block. "
        "Default: escalate when `escalate` is set, else flag. Never passed as safe.",
    )

    @model_validator(mode="after")
    def _escalate_needs_a_tier(self) -> SafetyCheck:
        if self.unscored_language == "escalate" and self.escalate is None:
            raise ValueError("unscored_language: escalate needs an `escalate:` guard tier; or use flag / block")
        return self


class LlamaGuardCheck(CheckBase, LlamaGuardTier):
    """Ask a Llama Guard model; fires when it answers `unsafe` with a listed category."""

    type: Literal["llama_guard"]
    timeout_ms: float = Field(DEFAULT_GUARD_TIMEOUT_MS, gt=0, description="Give up on the check after this long")
    categories: tuple[SafetyCategory, ...] | None = Field(
        None, description="Taxonomy categories that fire (default: every category the guard reports)"
    )


class ModerationCheck(CheckBase, ModerationTier):
    """Ask an OpenAI-compatible moderation endpoint; categories are mapped to the taxonomy."""

    type: Literal["moderation"]
    timeout_ms: float = Field(DEFAULT_GUARD_TIMEOUT_MS, gt=0, description="Give up on the check after this long")
    categories: tuple[SafetyCategory, ...] | None = Field(
        None, description="Taxonomy categories that fire (default: every category the upstream flags)"
    )


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


Check = Annotated[
    SafetyCheck | RecitationCheck | PiiCheck | RegexCheck | LlamaGuardCheck | ModerationCheck,
    Field(discriminator="type"),
]
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
    roles: tuple[Role, ...] | None = Field(
        None,
        description="Where the rule looks. Input: user, system, developer, assistant (earlier turns), tool "
        "(tool/function results), grounding (retrieved passages). Output: assistant (reply text), tool_call "
        "(tool-call arguments). Default: user on input; assistant and tool_call on output",
    )
    action: Action = "block"
    checks: tuple[Check, ...] = Field(min_length=1)
    stream: StreamSettings | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _roles_cover_directions(self) -> RuleSpec:
        if self.roles is None:
            return self
        for d, valid in (("input", INPUT_ROLES), ("output", OUTPUT_ROLES)):
            if self.direction in (d, "both") and not set(self.roles) & set(valid):
                raise ValueError(
                    f"roles {list(self.roles)} name no {d} role, so the rule would never run on {d}; "
                    f"{d} roles: {', '.join(valid)}" + (" (or set direction to one side)" if self.direction == "both" else "")
                )
        return self

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

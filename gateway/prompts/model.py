"""Prompt versions: what a version holds, its file format and its content hash.

A prompt is an id with immutable, numbered versions (1, 2, 3, ... per prompt)
and movable labels (``production``, ``staging``, anything else) that point at a
version. A version holds chat message templates, the variables they may use,
default request parameters, a model hint, author and change note, and a
content hash over everything that changes what the model sees.

Prompt file (YAML) read by ``gatehouse prompts push``::

    id: support-triage
    messages:
      - role: system
        template: "You triage tickets for {{ product }}. Answer in {{ language }}."
    variables:                 # a list of names (all required) or a mapping
      product: {description: "product name"}
      language: {default: English}
    parameters: {temperature: 0.2, max_tokens: 300}
    model: gpt-4o-mini         # hint only; routing still follows the request's model
    author: alice@example.com
    note: first version
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

PROMPT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
ROLES = ("system", "developer", "user", "assistant")
# request params a prompt may default (anything that shapes the model call, nothing that routes it)
ALLOWED_PARAMETERS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
        "frequency_penalty", "seed", "response_format", "logit_bias", "n", "tools", "tool_choice",
        "parallel_tool_calls", "reasoning_effort",
    }
)

# templates come from whoever can push prompts: parsed and rendered only in the sandbox
class BudgetSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with size budgets: ``"x" * 10**9`` or ``2 ** 10**9`` is refused before it
    is computed (``range`` is already capped by Jinja at ``MAX_RANGE`` items)."""

    intercepted_binops = frozenset({"*", "**"})
    MAX_ITEMS = 1_000_000

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1024:
            raise SecurityError(f"exponent {right} is over the template budget")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > self.MAX_ITEMS:
                    raise SecurityError("a repeated string or list would exceed the template budget")
        return super().call_binop(context, operator, left, right)


SANDBOX = BudgetSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class PromptFormatError(ValueError):
    """A prompt file or push payload is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class VariableSpec:
    name: str
    description: str | None = None
    required: bool = True
    default: Any = None


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    role: str
    template: str


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """What a user pushes: a version without its number, hash and timestamp."""

    id: str
    messages: tuple[MessageTemplate, ...]
    variables: tuple[VariableSpec, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    author: str | None = None
    note: str | None = None

    def content_hash(self) -> str:
        """sha256 over what the model sees (templates, variables, parameters, model hint).

        Author and note are left out on purpose: re-pushing the same prompt with
        another note is not a new version.
        """
        payload = {
            "id": self.id,
            "messages": [[m.role, m.template] for m in self.messages],
            "variables": [[v.name, v.required, v.default] for v in self.variables],
            "parameters": self.parameters,
            "model": self.model,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version of a prompt."""

    id: str
    version: int
    messages: tuple[MessageTemplate, ...]
    variables: tuple[VariableSpec, ...]
    parameters: dict[str, Any]
    model: str | None
    author: str | None
    note: str | None
    content_hash: str
    created_at: float

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = [asdict(m) for m in self.messages]
        d["variables"] = [asdict(v) for v in self.variables]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptVersion:
        return cls(
            id=d["id"],
            version=int(d["version"]),
            messages=tuple(MessageTemplate(**m) for m in d["messages"]),
            variables=tuple(VariableSpec(**v) for v in d["variables"]),
            parameters=dict(d.get("parameters") or {}),
            model=d.get("model"),
            author=d.get("author"),
            note=d.get("note"),
            content_hash=d["content_hash"],
            created_at=float(d["created_at"]),
        )

    @classmethod
    def from_json(cls, s: str | bytes) -> PromptVersion:
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_spec(cls, spec: PromptSpec, version: int, created_at: float | None = None) -> PromptVersion:
        return cls(
            id=spec.id,
            version=version,
            messages=spec.messages,
            variables=spec.variables,
            parameters=dict(spec.parameters),
            model=spec.model,
            author=spec.author,
            note=spec.note,
            content_hash=spec.content_hash(),
            created_at=time.time() if created_at is None else created_at,
        )


def parse_spec(raw: Any, source: str = "<prompt>") -> PromptSpec:
    """Validate a prompt document (parsed YAML/JSON) into a ``PromptSpec``."""
    if not isinstance(raw, dict):
        raise PromptFormatError(f"{source}: a prompt must be a mapping with `id` and `messages`")
    known = {"id", "messages", "variables", "parameters", "model", "author", "note"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PromptFormatError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    pid = raw.get("id")
    if not isinstance(pid, str) or not PROMPT_ID_RE.match(pid):
        raise PromptFormatError(f"{source}: `id` must match {PROMPT_ID_RE.pattern} (letters, digits, _ . -), got {pid!r}")
    msgs_raw = raw.get("messages")
    if not isinstance(msgs_raw, list) or not msgs_raw:
        raise PromptFormatError(f"{source}: `messages` must be a non-empty list of {{role, template}}")
    messages = []
    for i, m in enumerate(msgs_raw):
        if not isinstance(m, dict) or set(m) - {"role", "template", "content"}:
            raise PromptFormatError(f"{source}: messages[{i}] must have only `role` and `template`")
        role, template = m.get("role"), m.get("template", m.get("content"))
        if role not in ROLES:
            raise PromptFormatError(f"{source}: messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(template, str):
            raise PromptFormatError(f"{source}: messages[{i}].template must be a string")
        messages.append(MessageTemplate(role=role, template=template))
    variables = _parse_variables(raw.get("variables"), source)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise PromptFormatError(f"{source}: `parameters` must be a mapping")
    bad = sorted(set(params) - ALLOWED_PARAMETERS)
    if bad:
        raise PromptFormatError(
            f"{source}: parameters {', '.join(bad)} cannot be defaulted by a prompt; allowed: {', '.join(sorted(ALLOWED_PARAMETERS))}"
        )
    for key in ("model", "author", "note"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            raise PromptFormatError(f"{source}: `{key}` must be a string")
    spec = PromptSpec(
        id=pid,
        messages=tuple(messages),
        variables=variables,
        parameters=dict(params),
        model=raw.get("model"),
        author=raw.get("author"),
        note=raw.get("note"),
    )
    check_templates(spec, source)
    return spec


def _parse_variables(raw: Any, source: str) -> tuple[VariableSpec, ...]:
    if raw is None:
        return ()
    out: list[VariableSpec] = []
    if isinstance(raw, list):
        for name in raw:
            if not isinstance(name, str) or not name.isidentifier():
                raise PromptFormatError(f"{source}: variable names must be identifiers, got {name!r}")
            out.append(VariableSpec(name=name))
    elif isinstance(raw, dict):
        for name, spec in raw.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise PromptFormatError(f"{source}: variable names must be identifiers, got {name!r}")
            spec = spec or {}
            if not isinstance(spec, dict) or set(spec) - {"description", "default", "required"}:
                raise PromptFormatError(f"{source}: variables.{name} may have `description`, `default`, `required`")
            has_default = "default" in spec
            out.append(
                VariableSpec(
                    name=name,
                    description=spec.get("description"),
                    required=bool(spec.get("required", not has_default)),
                    default=spec.get("default"),
                )
            )
    else:
        raise PromptFormatError(f"{source}: `variables` must be a list of names or a mapping")
    names = [v.name for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PromptFormatError(f"{source}: variable(s) declared twice: {', '.join(dupes)}")
    return tuple(out)


def load_prompt_file(path: str | Path) -> PromptSpec:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptFormatError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PromptFormatError(f"{p}: invalid YAML: {exc}") from None
    return parse_spec(raw, str(p))


@dataclass(frozen=True, slots=True)
class PromptRef:
    """``id``, ``id@3`` or ``id:production``."""

    id: str
    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.id}@{self.version}"
        if self.label is not None:
            return f"{self.id}:{self.label}"
        return self.id


def parse_ref(text: str) -> PromptRef:
    if "@" in text:
        pid, _, v = text.partition("@")
        if not v.isdigit() or int(v) < 1:
            raise PromptFormatError(f"prompt reference {text!r}: the version after @ must be a positive integer")
        ref = PromptRef(pid, version=int(v))
    elif ":" in text:
        pid, _, label = text.partition(":")
        if not LABEL_RE.match(label):
            raise PromptFormatError(f"prompt reference {text!r}: bad label {label!r}")
        ref = PromptRef(pid, label=label)
    else:
        ref = PromptRef(text)
    if not PROMPT_ID_RE.match(ref.id):
        raise PromptFormatError(f"prompt reference {text!r}: bad prompt id {ref.id!r}")
    return ref


def template_variables(template: str) -> set[str]:
    return set(meta.find_undeclared_variables(SANDBOX.parse(template)))


def check_templates(spec: PromptSpec, source: str = "<prompt>") -> None:
    """At push time: every template parses and uses only declared variables."""
    declared = {v.name for v in spec.variables}
    for i, m in enumerate(spec.messages):
        try:
            used = template_variables(m.template)
            ast = SANDBOX.parse(m.template)
        except TemplateError as exc:
            raise PromptFormatError(f"{source}: messages[{i}].template does not parse: {exc}") from None
        # a prompt is one self-contained template: there is no loader to include or import from
        for node_type, tag in ((nodes.Include, "include"), (nodes.Import, "import"), (nodes.FromImport, "from ... import"), (nodes.Extends, "extends")):
            if ast.find(node_type) is not None:
                raise PromptFormatError(f"{source}: messages[{i}].template uses {{% {tag} %}}; prompt templates must be self-contained")
        undeclared = sorted(used - declared)
        if undeclared:
            raise PromptFormatError(
                f"{source}: messages[{i}].template uses undeclared variable(s) {', '.join(undeclared)}; "
                "add them under `variables`"
            )

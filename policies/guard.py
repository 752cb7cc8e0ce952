"""The guard-model tier: Llama Guard 3/4 and OpenAI-compatible moderation endpoints.

A guard tier asks a model the gateway already routes to. ``policies/`` never
imports the serving app, so the gateway injects a ``GuardTransport`` (calls
through its own router: retries, fallbacks, circuit breakers, upstream keys
stay in the gateway config) and each tier is a small plugin behind
``GuardTier``, chosen by ``type:`` in the policy:

- ``llama_guard``: the text goes to a Llama Guard model, whose answer is
  ``safe`` or ``unsafe`` then a line of hazard codes (``unsafe\\nS1,S9``); the
  codes map to the taxonomy (``evaluators.safety.taxonomy.LLAMA_GUARD_3``;
  Llama Guard 4 keeps S1–S14). With ``endpoint: chat`` the turn is sent as a
  message and the server's chat template writes the Llama Guard prompt (vLLM,
  Ollama, TGI do); with ``endpoint: completions`` Gatehouse writes the Llama
  Guard 3 prompt itself (``llama_guard_prompt``).
- ``moderation``: ``POST /v1/moderations`` on the route's target; OpenAI's
  categories map to the taxonomy (``FROM_OPENAI``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluators.safety.taxonomy import FROM_OPENAI, LLAMA_GUARD_3, from_llama_guard, from_openai


class GuardError(RuntimeError):
    """The guard answered something that cannot be read (or not at all)."""


class GuardTransport(Protocol):
    """Calls through the gateway's own routes (injected by the gateway)."""

    async def chat(self, route: str, messages: list[dict[str, Any]], *, max_tokens: int) -> str: ...

    async def completion(self, route: str, prompt: str, *, max_tokens: int) -> str: ...

    async def moderate(self, route: str, texts: list[str]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class GuardResult:
    """What a guard said about one text: flagged taxonomy categories (with scores)."""

    tier: str  # e.g. "llama_guard:guard-route"
    flagged: dict[str, float]  # category -> score (1.0 for a Llama Guard code)
    scores: dict[str, float] = field(default_factory=dict)  # every category it scored
    raw: str = ""  # the guard's own answer, abridged (codes, flagged OpenAI categories)


class GuardTier(Protocol):
    name: str

    async def classify(self, text: str, direction: str) -> GuardResult: ...


# ---- Llama Guard ------------------------------------------------------------------------------

PLACEHOLDER_REQUEST = "(the request is not shown)"


def llama_guard_prompt(text: str, direction: str) -> str:
    """The Llama Guard 3 prompt for one turn (``role`` User for input, Agent for output)."""
    cats = "\n".join(f"{code}: {name}." for code, (name, _) in LLAMA_GUARD_3.items())
    if direction == "output":
        convo = f"User: {PLACEHOLDER_REQUEST}\n\nAgent: {text}"
        role = "Agent"
    else:
        convo = f"User: {text}"
        role = "User"
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
        "policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{convo}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def llama_guard_messages(text: str, direction: str) -> list[dict[str, Any]]:
    if direction == "output":
        return [{"role": "user", "content": PLACEHOLDER_REQUEST}, {"role": "assistant", "content": text}]
    return [{"role": "user", "content": text}]


def parse_llama_guard(answer: str) -> list[str]:
    """``safe`` -> []; ``unsafe\\nS1,S9`` -> ["S1", "S9"]. Anything else is a ``GuardError``."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        raise GuardError("the guard model answered nothing")
    head = lines[0].lower()
    if head == "safe":
        return []
    if head != "unsafe":
        raise GuardError(f"the guard model's answer does not start with safe/unsafe: {answer[:80]!r}")
    if len(lines) < 2:
        return ["S?"]  # unsafe without codes: still unsafe (mapped to `other`)
    codes = [c.strip().upper() for c in lines[1].replace(" ", ",").split(",") if c.strip()]
    unknown = [c for c in codes if c not in LLAMA_GUARD_3]
    if unknown:
        raise GuardError(f"the guard model named hazard codes outside Llama Guard 3's S1-S14: {', '.join(unknown)}")
    return codes


class LlamaGuard:
    def __init__(self, transport: GuardTransport, route: str, endpoint: str = "chat") -> None:
        self.transport = transport
        self.route = route
        self.endpoint = endpoint
        self.name = f"llama_guard:{route}"

    async def classify(self, text: str, direction: str) -> GuardResult:
        if self.endpoint == "completions":
            answer = await self.transport.completion(self.route, llama_guard_prompt(text, direction), max_tokens=20)
        else:
            answer = await self.transport.chat(self.route, llama_guard_messages(text, direction), max_tokens=20)
        codes = parse_llama_guard(answer)
        cats = ["other"] if codes == ["S?"] else from_llama_guard(codes)
        flagged = dict.fromkeys(cats, 1.0)
        return GuardResult(self.name, flagged, dict(flagged), "unsafe " + ",".join(codes) if codes else "safe")


# ---- OpenAI-compatible moderation ---------------------------------------------------------------

def read_moderation(result: Any, threshold: float | None) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """One ``results[]`` item -> (flagged taxonomy categories, all taxonomy scores, flagged OpenAI names)."""
    if not isinstance(result, dict) or not isinstance(result.get("category_scores"), dict):
        raise GuardError("the moderation upstream's result has no category_scores")
    raw_scores = {k: float(v) for k, v in result["category_scores"].items() if isinstance(v, int | float)}
    scores = from_openai(raw_scores)
    if threshold is not None:
        names = [k for k, v in raw_scores.items() if k in FROM_OPENAI and v >= threshold]
    else:
        flags = result.get("categories")
        if not isinstance(flags, dict):
            raise GuardError("the moderation upstream's result has no categories")
        names = [k for k, v in flags.items() if v is True and k in FROM_OPENAI]
    flagged: dict[str, float] = {}
    for n in names:
        cat = FROM_OPENAI[n]
        flagged[cat] = max(flagged.get(cat, 0.0), raw_scores.get(n, 1.0))
    return flagged, scores, names


class Moderation:
    def __init__(self, transport: GuardTransport, route: str, threshold: float | None = None) -> None:
        self.transport = transport
        self.route = route
        self.threshold = threshold
        self.name = f"moderation:{route}"

    async def classify(self, text: str, direction: str) -> GuardResult:
        results = await self.transport.moderate(self.route, [text])
        if len(results) != 1:
            raise GuardError(f"the moderation upstream returned {len(results)} results for 1 input")
        flagged, scores, names = read_moderation(results[0], self.threshold)
        return GuardResult(self.name, flagged, scores, ",".join(names) or "not flagged")


def build_tier(spec: Any, transport: GuardTransport | None) -> GuardTier:
    """The tier a ``llama_guard`` / ``moderation`` spec (a check or a cascade's ``guard``) names."""
    if transport is None:
        raise GuardError("no guard transport: guard tiers need the gateway's routes (or --config for dry-run)")
    if spec.type == "llama_guard":
        return LlamaGuard(transport, spec.route, spec.endpoint)
    if spec.type == "moderation":
        return Moderation(transport, spec.route, spec.threshold)
    raise GuardError(f"unknown guard tier {spec.type!r}")  # pragma: no cover - the schema prevents it


__all__ = [
    "GuardError", "GuardResult", "GuardTier", "GuardTransport", "LlamaGuard", "Moderation",
    "build_tier", "llama_guard_messages", "llama_guard_prompt", "parse_llama_guard", "read_moderation",
]

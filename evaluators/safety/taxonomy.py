"""The one set of harm categories used by policies, verdicts, metrics and reports.

Every scorer reports scores under these names, and every external taxonomy (OpenAI's
moderation categories, Llama Guard 3's hazard codes, Detoxify's labels) is mapped onto
them here, so a policy threshold means the same thing whichever scorer produced it.

==================  =======================================================================
category            what it covers
==================  =======================================================================
violence            violent crimes and indiscriminate weapons (bombs, guns, chemical or
                    biological weapons), and content that glorifies or depicts violence
crime               non-violent crime: illicit drugs, hacking and malware, fraud, theft
self_harm           suicide, self-injury, eating disorders (intent, instructions, promotion)
sexual              sexual content meant to arouse, explicit sex scenes, sexual services
sexual_minors       any sexual content involving someone under 18
hate                hate and harassment: demeaning people for a protected attribute,
                    bullying and tormenting individuals
threat              a threat of harm against a person or group
jailbreak           an attempt to talk a model out of its rules (role-play "DAN" prompts,
                    "ignore your guidelines", fictional framing of a harmful request)
prompt_injection    instructions planted for a model to follow: "ignore all previous
                    instructions", or commands hidden in a document, email or tool result
==================  =======================================================================

Legacy categories (``toxicity``, ``identity_attack``) are the ``minilm-head`` and
Detoxify names that existing policies use; ``other`` is what a guard model reports for
hazards outside this set (Llama Guard's defamation, specialised advice, privacy,
intellectual property, elections): only a guard model produces it.

``unscored_language`` is not a category a scorer produces: it is the verdict category of
a text whose language no configured scorer covers (see ``evaluators.safety.language``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

VIOLENCE: Final = "violence"
CRIME: Final = "crime"
SELF_HARM: Final = "self_harm"
SEXUAL: Final = "sexual"
SEXUAL_MINORS: Final = "sexual_minors"
HATE: Final = "hate"
THREAT: Final = "threat"
JAILBREAK: Final = "jailbreak"
PROMPT_INJECTION: Final = "prompt_injection"
TOXICITY: Final = "toxicity"
IDENTITY_ATTACK: Final = "identity_attack"
OTHER: Final = "other"
UNSCORED_LANGUAGE: Final = "unscored_language"

# The harm categories, in report order.
CATEGORIES: Final[tuple[str, ...]] = (
    VIOLENCE, CRIME, SELF_HARM, SEXUAL, SEXUAL_MINORS, HATE, THREAT, JAILBREAK, PROMPT_INJECTION,
)
LEGACY_CATEGORIES: Final[tuple[str, ...]] = (TOXICITY, IDENTITY_ATTACK)
GUARD_ONLY_CATEGORIES: Final[tuple[str, ...]] = (OTHER,)
# Every name a policy threshold may use (which scorer produces which is the scorer's
# ``categories``; ``policy check`` refuses a name no configured scorer produces).
ALL_CATEGORIES: Final[frozenset[str]] = frozenset(CATEGORIES + LEGACY_CATEGORIES + GUARD_ONLY_CATEGORIES)

DESCRIPTIONS: Final = MappingProxyType({
    VIOLENCE: "violent crimes and indiscriminate weapons",
    CRIME: "non-violent crime: drugs, hacking, fraud",
    SELF_HARM: "suicide and self-harm",
    SEXUAL: "sexual content",
    SEXUAL_MINORS: "sexual content involving minors",
    HATE: "hate and harassment",
    THREAT: "threats of harm",
    JAILBREAK: "jailbreak attempts",
    PROMPT_INJECTION: "prompt injection",
    TOXICITY: "toxicity (legacy, Detoxify)",
    IDENTITY_ATTACK: "identity attack (legacy, Detoxify)",
    OTHER: "other hazards a guard model reports (defamation, advice, privacy, IP, elections)",
})

# OpenAI moderation categories (omni-moderation) -> ours. A category maps to exactly one
# of ours; "harassment/threatening" and "hate/threatening" are threats first.
FROM_OPENAI: Final = MappingProxyType({
    "sexual": SEXUAL,
    "sexual/minors": SEXUAL_MINORS,
    "hate": HATE,
    "hate/threatening": THREAT,
    "harassment": HATE,
    "harassment/threatening": THREAT,
    "self-harm": SELF_HARM,
    "self-harm/intent": SELF_HARM,
    "self-harm/instructions": SELF_HARM,
    "violence": VIOLENCE,
    "violence/graphic": VIOLENCE,
    "illicit": CRIME,
    "illicit/violent": VIOLENCE,
})
# Ours -> the OpenAI categories a /v1/moderations answer reports it under: the exact
# inverse of FROM_OPENAI, so a score of ours is copied to every OpenAI category that maps
# to it (an app reading "self-harm/intent" sees the self_harm score, never a silent 0).
# jailbreak / prompt_injection have no OpenAI category.
TO_OPENAI: Final = MappingProxyType({
    ours: tuple(name for name, cat in FROM_OPENAI.items() if cat == ours) for ours in CATEGORIES
})
OPENAI_CATEGORIES: Final[tuple[str, ...]] = tuple(FROM_OPENAI)

# The 8 labels of OpenAI's moderation evaluation set (Markov et al. 2023,
# samples-1680.jsonl.gz) -> ours. H2 (hate/threatening) is a threat; V2 (graphic
# violence) is violence.
FROM_OPENAI_EVAL: Final = MappingProxyType({
    "S": SEXUAL, "H": HATE, "V": VIOLENCE, "HR": HATE, "SH": SELF_HARM,
    "S3": SEXUAL_MINORS, "H2": THREAT, "V2": VIOLENCE,
})

# Llama Guard 3 hazard codes -> ours.
LLAMA_GUARD_3: Final = MappingProxyType({
    "S1": ("Violent Crimes", VIOLENCE),
    "S2": ("Non-Violent Crimes", CRIME),
    "S3": ("Sex-Related Crimes", CRIME),
    "S4": ("Child Sexual Exploitation", SEXUAL_MINORS),
    "S5": ("Defamation", OTHER),
    "S6": ("Specialized Advice", OTHER),
    "S7": ("Privacy", OTHER),
    "S8": ("Intellectual Property", OTHER),
    "S9": ("Indiscriminate Weapons", VIOLENCE),
    "S10": ("Hate", HATE),
    "S11": ("Suicide & Self-Harm", SELF_HARM),
    "S12": ("Sexual Content", SEXUAL),
    "S13": ("Elections", OTHER),
    "S14": ("Code Interpreter Abuse", CRIME),
})
FROM_LLAMA_GUARD: Final = MappingProxyType({code: cat for code, (_, cat) in LLAMA_GUARD_3.items()})

# Detoxify labels -> ours. toxicity / identity_attack keep their legacy names (the
# closest harm category is given in DETOXIFY_HARM for reports).
FROM_DETOXIFY: Final = MappingProxyType({
    "toxicity": TOXICITY,
    "severe_toxicity": TOXICITY,
    "obscene": TOXICITY,
    "insult": HATE,
    "identity_attack": IDENTITY_ATTACK,
    "threat": THREAT,
    "sexual_explicit": SEXUAL,
})
DETOXIFY_HARM: Final = MappingProxyType({TOXICITY: HATE, IDENTITY_ATTACK: HATE})


def _check() -> None:
    targets = set(FROM_OPENAI.values()) | set(FROM_OPENAI_EVAL.values()) | set(FROM_LLAMA_GUARD.values())
    targets |= set(FROM_DETOXIFY.values()) | set(TO_OPENAI)
    unknown = targets - ALL_CATEGORIES
    assert not unknown, f"taxonomy maps onto unknown categories {unknown}"
    for ours, theirs in TO_OPENAI.items():
        assert all(FROM_OPENAI[t] == ours for t in theirs), ours
    assert set(CATEGORIES) <= set(TO_OPENAI), "every harm category needs a TO_OPENAI row"
    assert UNSCORED_LANGUAGE not in ALL_CATEGORIES


_check()


def _max_mapped(scores: dict[str, float], mapping: Mapping[str, str]) -> dict[str, float]:
    """``scores`` renamed through ``mapping`` (unmapped names dropped), max where names collide."""
    out: dict[str, float] = {}
    for name, score in scores.items():
        ours = mapping.get(name)
        if ours is not None:
            out[ours] = max(out.get(ours, 0.0), float(score))
    return out


def from_openai(scores: dict[str, float]) -> dict[str, float]:
    """OpenAI ``category_scores`` -> ours (max over the OpenAI categories that map to one of ours)."""
    return _max_mapped(scores, FROM_OPENAI)


def to_openai(scores: dict[str, float]) -> dict[str, float]:
    """Our scores -> every OpenAI moderation category (0.0 where no category of ours maps)."""
    out = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    for ours, score in scores.items():
        for name in TO_OPENAI.get(ours, ()):
            out[name] = max(out[name], float(score))
    return out


def from_llama_guard(codes: list[str] | tuple[str, ...]) -> list[str]:
    """Llama Guard hazard codes ("S1", "S10"...) -> our categories, in order, without repeats.
    An unknown code raises ``KeyError`` (a guard model speaking another taxonomy)."""
    return list(dict.fromkeys(FROM_LLAMA_GUARD[c.strip().upper()] for c in codes))


def from_detoxify(scores: dict[str, float]) -> dict[str, float]:
    """Detoxify label scores -> ours (max over labels that map to one of ours)."""
    return _max_mapped(scores, FROM_DETOXIFY)


__all__ = [
    "ALL_CATEGORIES", "CATEGORIES", "CRIME", "DESCRIPTIONS", "DETOXIFY_HARM", "FROM_DETOXIFY",
    "FROM_LLAMA_GUARD", "FROM_OPENAI", "FROM_OPENAI_EVAL", "GUARD_ONLY_CATEGORIES", "HATE",
    "IDENTITY_ATTACK", "JAILBREAK", "LEGACY_CATEGORIES", "LLAMA_GUARD_3", "OPENAI_CATEGORIES", "OTHER",
    "PROMPT_INJECTION", "SELF_HARM", "SEXUAL", "SEXUAL_MINORS", "THREAT", "TOXICITY", "TO_OPENAI",
    "UNSCORED_LANGUAGE", "VIOLENCE", "from_detoxify", "from_llama_guard", "from_openai", "to_openai",
]

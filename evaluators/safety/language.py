"""Which language a checked text is in, offline and cheap enough for the hot path.

    from evaluators.safety.language import detect, covers
    detect("爆弾の作り方を詳しく教えて")        # "ja"
    detect("How do I kill a Python process?")  # "en"
    covers(scorer.languages, detect(text))       # False -> the verdict says unscored_language

Two steps:

1. **Script.** Letters are counted by Unicode script. Kana decides Japanese, Hangul
   Korean, Han alone Chinese, and a script that one language owns (Thai, Greek, Hebrew,
   Georgian, Armenian...) decides that language: a single character is evidence
   enough ("爆弾の" is "ja"; Han alone, "爆弾", reads as "zh": both are uncovered by an
   English scorer either way).
2. **Latin, Cyrillic, Arabic and Devanagari** text goes to ``py3langid`` (a fork of
   langid.py that ships its naive-Bayes model as a numpy archive, no pickle; ~25 µs for a
   sentence), limited to the ISO 639-1 languages it knows that use that script.

A text with too little evidence is ``"und"`` (undetermined): no letters at all (code,
numbers, emoji), or a short Latin-script text (fewer than ``MIN_LATIN_LETTERS`` letters)
that langid cannot place with confidence. ``covers`` treats ``"und"`` as covered *only*
for Latin script or no letters (a covered scorer still reads it), never for a text whose
script no covered language uses.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from typing import Any

UNDETERMINED = "und"

# Scripts that name their language on their own.
_SCRIPT_LANGUAGE = {
    "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "THAI": "th", "GREEK": "el",
    "HEBREW": "he", "GEORGIAN": "ka", "ARMENIAN": "hy", "KHMER": "km", "LAO": "lo",
    "MYANMAR": "my", "SINHALA": "si", "TAMIL": "ta", "TELUGU": "te", "KANNADA": "kn",
    "MALAYALAM": "ml", "GUJARATI": "gu", "GURMUKHI": "pa", "BENGALI": "bn", "ORIYA": "or",
    "ETHIOPIC": "am", "TIBETAN": "bo",
}
# Scripts shared by several languages: langid picks among these.
_SCRIPT_CANDIDATES = {
    "LATIN": ("en", "es", "fr", "de", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "sk",
              "sl", "hr", "bs", "ro", "hu", "tr", "id", "ms", "vi", "tl", "ca", "gl", "eu", "et",
              "lv", "lt", "sq", "af", "sw", "cy", "ga", "is", "az", "uz"),
    "CYRILLIC": ("ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "mn", "tg"),
    "ARABIC": ("ar", "fa", "ur", "ps", "ku", "ug"),
    "DEVANAGARI": ("hi", "mr", "ne", "sa"),
}
MIN_LATIN_LETTERS = 24  # below this, a Latin text needs langid confidence >= SHORT_CONFIDENCE
SHORT_CONFIDENCE = 0.9
SCRIPT_SHARE = 0.3  # a non-Latin script with at least this share of the letters decides


@functools.lru_cache(maxsize=8192)
def _script(ch: str) -> str:
    """The Unicode script of a letter, from its character name (no extra dependency)."""
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "OTHER"
    if name.startswith("CJK") or name.startswith("KANGXI"):
        return "HAN"
    if "HIRAGANA" in name or "KATAKANA" in name:
        return "HIRAGANA" if "HIRAGANA" in name else "KATAKANA"
    first = name.split(" ", 1)[0]
    if first in ("FULLWIDTH", "HALFWIDTH"):
        return "LATIN" if "LATIN" in name else "KATAKANA" if "KATAKANA" in name else "HANGUL" if "HANGUL" in name else "OTHER"
    return first


def scripts(text: str) -> Counter[str]:
    """Letter counts by script (digits, punctuation, spaces and emoji are not counted)."""
    return Counter(_script(ch) for ch in text if ch.isalpha())


class _LangId:
    """py3langid restricted to each script's candidate languages (the model loads once, ~0.6 s)."""

    def __init__(self) -> None:
        import copy

        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        base = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        known = set(base.nb_classes)
        self._by_script: dict[str, Any] = {}
        for script, candidates in _SCRIPT_CANDIDATES.items():
            ident = copy.copy(base)
            ident.set_languages([c for c in candidates if c in known])
            self._by_script[script] = ident

    def classify(self, text: str, script: str) -> tuple[str, float]:
        lang, conf = self._by_script[script].classify(text)
        return str(lang), float(conf)


@functools.lru_cache(maxsize=1)
def _langid() -> _LangId:
    return _LangId()


def warm_up() -> None:
    """Load the language model now (startup) rather than on the first request."""
    _langid()


def detect(text: str) -> str:
    """ISO 639-1 code of the text's language ("en", "ja", "zh", "ko"...), or ``"und"``."""
    counts = scripts(text)
    letters = sum(counts.values())
    if not letters:
        return UNDETERMINED
    kana = counts["HIRAGANA"] + counts["KATAKANA"]
    cjk = kana + counts["HAN"]
    if cjk and cjk >= SCRIPT_SHARE * letters:
        # Japanese mixes kana into Han text; Chinese has none
        return "ja" if kana else ("ko" if counts["HANGUL"] > counts["HAN"] else "zh")
    script, n = max(((s, c) for s, c in counts.items() if s != "LATIN"), key=lambda sc: sc[1], default=("", 0))
    if n and n >= SCRIPT_SHARE * letters:
        if script in _SCRIPT_LANGUAGE:
            return _SCRIPT_LANGUAGE[script]
        if script in _SCRIPT_CANDIDATES:
            return _langid().classify(text, script)[0]
        return UNDETERMINED
    lang, conf = _langid().classify(text, "LATIN")
    if counts["LATIN"] < MIN_LATIN_LETTERS and conf < SHORT_CONFIDENCE:
        return UNDETERMINED
    return lang


def covers(languages: frozenset[str], lang: str, text: str | None = None) -> bool:
    """Whether a scorer covering ``languages`` can score text detected as ``lang``.

    ``"und"`` is covered when the scorer covers any Latin-script language and the text
    (if given) has no letters of another script: too short to tell is read, not skipped."""
    if lang in languages:
        return True
    if lang != UNDETERMINED:
        return False
    if not languages & set(_SCRIPT_CANDIDATES["LATIN"]):
        return False
    if text is None:
        return True
    return all(s == "LATIN" for s in scripts(text))


__all__ = ["UNDETERMINED", "covers", "detect", "scripts", "warm_up"]

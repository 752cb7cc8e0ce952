"""Reference-based metrics for evaluation runs, with seeded bootstrap CIs.

The metric set follows the task when none is given:

- summarization → ROUGE-1/2/L and ROUGE-Lsum (rouge-score). ROUGE-Lsum is
  summary-level LCS over sentences, and rouge-score finds sentences only at
  newlines, so texts are sentence-split first and joined with ``"\\n"``.
- generation / translation → corpus BLEU and chrF (sacrebleu; signatures kept).
- qa → exact match and token F1 with SQuAD answer normalisation.
- classification → accuracy and macro-F1.

Tokenizers: rouge-score's default tokenizer keeps only ``[a-z0-9]``, so any
text with non-ASCII letters scores 0 (or nearly). Japanese (kana in the text)
gets MeCab morphemes (fugashi + unidic-lite); other such corpora get a
unicode-aware tokenizer (CJK/Thai one token per character). BLEU picks
``ja-mecab`` for Japanese (mecab-python3 + ipadic; ``char`` if they are
missing), ``zh`` for Chinese, ``intl`` for other non-Latin scripts. The choice
is recorded in the result.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TASKS = ("summarization", "generation", "translation", "qa", "classification")
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum"),
    "generation": ("bleu", "chrf"),
    "translation": ("bleu", "chrf"),
    "qa": ("exact_match", "f1"),
    "classification": ("accuracy", "macro_f1"),
}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# --------------------------------------------------------------------------- scripts


def _script_of(ch: str) -> str | None:
    """Coarse script of a letter: latin-ascii, latin-ext, cjk, kana, hangul, thai, other."""
    if not ch.isalpha():
        return None
    o = ord(ch)
    if o < 128:
        return "ascii"
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
        return "kana"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "hangul"
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F:
        return "cjk"
    if 0x0E00 <= o <= 0x0E7F or 0x0E80 <= o <= 0x0EFF or 0x1000 <= o <= 0x109F or 0x1780 <= o <= 0x17FF:
        return "thai"  # and other scripts written without spaces (Lao, Myanmar, Khmer)
    name = unicodedata.name(ch, "")
    if name.startswith("LATIN"):
        return "latin-ext"
    return "other"


def script_profile(texts: Sequence[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for t in texts:
        for ch in t:
            s = _script_of(ch)
            if s:
                counts[s] += 1
    return counts


def needs_unicode_tokenizer(texts: Sequence[str]) -> bool:
    """True when rouge-score's ASCII-only tokenizer would drop a meaningful share of letters.

    Any non-Latin letter switches (those texts would score 0). Accented Latin
    letters switch only above 2% of letters: an English corpus with a few
    "café"s keeps the standard tokenizer and stemmer, so its scores stay
    comparable with published ROUGE numbers.
    """
    prof = script_profile(texts)
    total = sum(prof.values()) or 1
    non_latin = sum(v for k, v in prof.items() if k not in ("ascii", "latin-ext"))
    return non_latin > 0 or prof["latin-ext"] / total > 0.02


def choose_bleu_tokenizer(texts: Sequence[str]) -> str:
    prof = script_profile(texts)
    total = sum(prof.values()) or 1
    if prof["kana"] / total > 0.05:
        return _first_available(("ja-mecab", "char"))
    if prof["hangul"] / total > 0.2:
        return _first_available(("ko-mecab", "char"))
    if prof["cjk"] / total > 0.2:
        return "zh"
    if prof["thai"] / total > 0.2:
        return "char"
    if prof["other"] / total > 0.2:
        return "intl"
    return "13a"


def _first_available(names: Sequence[str]) -> str:
    from sacrebleu.metrics import BLEU

    for name in names:
        try:
            BLEU(tokenize=name)
            return name
        except Exception:  # missing optional dependency (MeCab dictionaries)
            continue
    return names[-1]


class UnicodeTokenizer:
    """rouge-score compatible tokenizer that keeps letters of every script.

    Lowercases (casefold), splits on anything that is not a letter, digit or
    combining mark, and makes each CJK/kana/Thai character its own token,
    because those scripts do not separate words with spaces.
    """

    name = "unicode-char-cjk"
    _word = re.compile(r"[\w\u0300-\u036f]+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for word in self._word.findall(unicodedata.normalize("NFC", text.casefold())):
            word = word.replace("_", "")
            if not word:
                continue
            buf = ""
            for ch in word:
                if _script_of(ch) in ("cjk", "kana", "thai"):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(buf)
        return out


_JA = "\u3005\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_JA_RUN = re.compile(f"(?P<ja>[{_JA}]+)|(?P<other>[^{_JA}]+)")


class JapaneseTokenizer(UnicodeTokenizer):
    """Morphemes for runs of Han/kana (MeCab via fugashi, unidic-lite dictionary), the
    unicode tokenizer's words for everything else: ROUGE on Japanese counts words,
    not characters (one shared character such as は or の is not a shared word)."""

    def __init__(self) -> None:
        from importlib.metadata import version

        from evaluators.recitation.text import MORPHEMES

        self._morphemes = MORPHEMES
        self.name = f"ja-fugashi-unidic-lite-{version('unidic-lite')}"

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for word in self._word.findall(unicodedata.normalize("NFKC", text).casefold()):
            for run in _JA_RUN.finditer(word.replace("_", "")):
                piece = run.group()
                if run.lastgroup == "ja":
                    out.extend(piece[s:e] for s, e in self._morphemes.split(piece))
                else:
                    out.append(piece)
        return out


def is_japanese(texts: Sequence[str]) -> bool:
    prof = script_profile(texts)
    return prof["kana"] / (sum(prof.values()) or 1) > 0.05


def rouge_tokenizer(texts: Sequence[str], requested: str = "auto") -> Any:
    """The tokenizer object rouge-score should use (None: its default), by script."""
    if requested == "ja" or (requested == "auto" and is_japanese(texts)):
        try:
            return JapaneseTokenizer()
        except ImportError:  # fugashi/unidic-lite missing: characters, and the name says so
            return UnicodeTokenizer()
    if requested == "unicode" or (requested == "auto" and needs_unicode_tokenizer(texts)):
        return UnicodeTokenizer()
    return None


# --------------------------------------------------------------------------- sentences

_SENT_END = re.compile(r"(?<=[.!?。！？])[\"'”’)\]]*\s+(?=\S)|(?<=[。！？])(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Simple splitter: existing line breaks, then ., !, ? (and CJK stops) followed by a space."""
    out: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        out.extend(s.strip() for s in _SENT_END.split(line) if s.strip())
    return out


def prepare_lsum(text: str) -> str:
    return "\n".join(split_sentences(text))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    stat: Callable[[np.ndarray], float] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` (default: mean) over items, seeded."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.shape[0], size=(n_boot, arr.shape[0]))
    if stat is None:
        boots = arr[idx].mean(axis=1)
    else:
        boots = np.array([stat(arr[i]) for i in idx])
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return (float("nan"), float("nan"))
    return (float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2)))


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


# --------------------------------------------------------------------------- result type


@dataclass
class MetricValue:
    value: float
    ci_low: float
    ci_high: float
    per_item: list[float] | None = None

    def to_dict(self, with_items: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "ci95": [self.ci_low, self.ci_high]}
        if with_items and self.per_item is not None:
            d["per_item"] = self.per_item
        return d


@dataclass
class MetricsResult:
    task: str
    n: int
    metrics: dict[str, MetricValue]
    tokenizers: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    ids: list[str] | None = None

    def to_dict(self, with_items: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task": self.task,
            "n": self.n,
            "metrics": {k: v.to_dict(with_items) for k, v in self.metrics.items()},
            "tokenizers": self.tokenizers,
            "signatures": self.signatures,
        }
        if with_items and self.ids is not None:
            d["ids"] = self.ids
        return d


# --------------------------------------------------------------------------- ROUGE


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
    tokenizer: str = "auto",
) -> tuple[dict[str, list[float]], str]:
    """Per-item ROUGE F-measures (max over references). Returns (scores, tokenizer name)."""
    from rouge_score import rouge_scorer

    all_text = list(predictions) + [r for refs in references for r in refs]
    tok_obj: Any = rouge_tokenizer(all_text, tokenizer)
    tok_name = "rouge_score-default" if tok_obj is None else tok_obj.name
    # the Porter stemmer only makes sense for English tokens
    stem = use_stemmer and tok_obj is None
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=stem, tokenizer=tok_obj)
    out: dict[str, list[float]] = {t: [] for t in rouge_types}
    for pred, refs in zip(predictions, references, strict=True):
        best = dict.fromkeys(rouge_types, 0.0)
        for ref in refs or [""]:
            if "rougeLsum" in rouge_types:
                s = scorer.score(prepare_lsum(ref), prepare_lsum(pred))
                s_plain = scorer.score(ref, pred) if len(rouge_types) > 1 else s
                s = {**s_plain, "rougeLsum": s["rougeLsum"]}
            else:
                s = scorer.score(ref, pred)
            for t in rouge_types:
                best[t] = max(best[t], float(s[t].fmeasure))
        for t in rouge_types:
            out[t].append(best[t])
    return out, tok_name + ("+porter" if stem else "")


# --------------------------------------------------------------------------- BLEU / chrF


def _ref_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    width = max((len(r) for r in references), default=1) or 1
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def corpus_bleu_chrf(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenize: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, MetricValue], dict[str, str], dict[str, str]]:
    """Corpus BLEU and chrF with bootstrap CIs from resampled sufficient statistics."""
    from sacrebleu.metrics import BLEU, CHRF

    all_text = list(predictions) + [r for refs in references for r in refs]
    tok = choose_bleu_tokenizer(all_text) if tokenize == "auto" else tokenize
    streams = _ref_streams(references)
    out: dict[str, MetricValue] = {}
    sigs: dict[str, str] = {}
    for name, metric in (("bleu", BLEU(tokenize=tok)), ("chrf", CHRF())):
        score = metric.corpus_score(list(predictions), streams)  # type: ignore[arg-type]
        sigs[name] = str(metric.get_signature())
        # per-sentence sufficient statistics: sums over a resample give its corpus score
        stats = np.asarray(metric._extract_corpus_statistics(list(predictions), streams))  # type: ignore[arg-type]
        lo = hi = float("nan")
        if len(predictions) > 1:
            boots = []
            for idx in bootstrap_indices(len(predictions), n_boot, seed):
                summed = stats[idx].sum(axis=0).tolist()
                boots.append(metric._compute_score_from_stats(summed).score)
            lo, hi = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
        per_item = [float(metric._compute_score_from_stats(list(s)).score) for s in stats]
        out[name] = MetricValue(float(score.score), lo, hi, per_item)
    return out, {"bleu": tok, "chrf": "char (chrF)"}, sigs


# --------------------------------------------------------------------------- QA


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in ground_truths))


def token_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    best = 0.0
    p_toks = normalize_answer(prediction).split()
    for g in ground_truths:
        g_toks = normalize_answer(g).split()
        common = collections.Counter(p_toks) & collections.Counter(g_toks)
        same = sum(common.values())
        if not p_toks or not g_toks:
            f = float(p_toks == g_toks)
        elif same == 0:
            f = 0.0
        else:
            prec, rec = same / len(p_toks), same / len(g_toks)
            f = 2 * prec * rec / (prec + rec)
        best = max(best, f)
    return best


# --------------------------------------------------------------------------- classification


def normalize_label(s: str) -> str:
    return s.strip().strip(string.punctuation + " ").casefold()


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Macro-F1 over the labels present in ``y_true`` (sklearn ``average="macro"``, zero_division=0)."""
    labels = sorted(set(y_true))
    if not labels:
        return float("nan")
    tp: collections.Counter[str] = collections.Counter()
    fp: collections.Counter[str] = collections.Counter()
    fn: collections.Counter[str] = collections.Counter()
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    f1s = []
    for lab in labels:
        denom = 2 * tp[lab] + fp[lab] + fn[lab]
        f1s.append(2 * tp[lab] / denom if denom else 0.0)
    return float(sum(f1s) / len(f1s))


# --------------------------------------------------------------------------- entry point


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    task: str = "generation",
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
    ids: Sequence[str] | None = None,
) -> MetricsResult:
    """Score predictions against references (each a list; max over references)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    chosen = tuple(metrics) if metrics else DEFAULT_METRICS[task]
    result = MetricsResult(task=task, n=len(predictions), metrics={}, ids=list(ids) if ids else None)

    rouge_wanted = [m for m in chosen if m in ROUGE_TYPES]
    if rouge_wanted:
        scores, tok = rouge_scores(predictions, references, rouge_types=rouge_wanted, tokenizer=tokenizer)
        result.tokenizers["rouge"] = tok
        for name, vals in scores.items():
            lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
            result.metrics[name] = MetricValue(float(np.mean(vals)) if vals else float("nan"), lo, hi, vals)
    if "bleu" in chosen or "chrf" in chosen:
        vals2, toks, sigs = corpus_bleu_chrf(
            predictions, references, tokenize="auto" if tokenizer in ("auto", "unicode") else "ja-mecab" if tokenizer == "ja" else tokenizer,
            n_boot=n_boot, seed=seed,
        )
        for name in ("bleu", "chrf"):
            if name in chosen:
                result.metrics[name] = vals2[name]
                result.tokenizers[name] = toks[name]
                result.signatures[name] = sigs[name]
    if "exact_match" in chosen:
        em = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
        result.metrics["exact_match"] = MetricValue(float(np.mean(em)), *bootstrap_ci(em, n_boot=n_boot, seed=seed), em)
    if "f1" in chosen:
        f1 = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
        result.metrics["f1"] = MetricValue(float(np.mean(f1)), *bootstrap_ci(f1, n_boot=n_boot, seed=seed), f1)
    if "accuracy" in chosen or "macro_f1" in chosen:
        y_true = [normalize_label(r[0]) if r else "" for r in references]
        y_pred = [normalize_label(p) for p in predictions]
        correct = [float(t == p) for t, p in zip(y_true, y_pred, strict=True)]
        if "accuracy" in chosen:
            result.metrics["accuracy"] = MetricValue(
                float(np.mean(correct)), *bootstrap_ci(correct, n_boot=n_boot, seed=seed), correct
            )
        if "macro_f1" in chosen:
            pairs = np.array(list(zip(y_true, y_pred, strict=True)), dtype=object)

            def _mf1(idx: np.ndarray) -> float:
                sub = pairs[idx.astype(int)]
                return macro_f1([str(x) for x in sub[:, 0]], [str(x) for x in sub[:, 1]])

            value = macro_f1(y_true, y_pred)
            lo, hi = bootstrap_ci(np.arange(len(y_true)), stat=_mf1, n_boot=n_boot, seed=seed)
            result.metrics["macro_f1"] = MetricValue(value, lo, hi)
    unknown = [m for m in chosen if m not in result.metrics]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: rouge1/2/L/Lsum, bleu, chrf, exact_match, f1, accuracy, macro_f1")
    return result

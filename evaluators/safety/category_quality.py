"""Quality report for the harm-category scorer, on data training never saw.

    python -m evaluators.safety.quality --data DIR [--out DIR] [--json] [--band 0.2 0.8]

What it measures (held-out splits of ``evaluators.safety.category_data``):

- per OpenAI label, AUPRC and ROC-AUC on the held-out half of the OpenAI moderation
  evaluation set (our category score for the label's category, ``taxonomy.FROM_OPENAI_EVAL``);
- recall on held-out AdvBench requests and on GPTFuzz's 20 held-out questions ("blocked"
  = any harm category at or above its recommended threshold);
- jailbreak recall on held-out jailbreak templates (filled with held-out questions);
- output side: GPTFuzz replies to held-out questions, complied vs refused;
- injection recall (by where the attack sits) and false positives on BIPIA's test split,
  and recall on the held-out
  frames of our written direct injections and threats (``attack_templates``);
- HateCheck held-out template groups (hate, threat);
- block rate on held-out benign lookalikes and held-out modern benign questions and
  replies, and on long benign prose (*Alice*, ~1,500-character passages, never trained
  on); the flag rate on held-out hh-rlhf red-team openings (no ground truth);
- the must-block probes and their benign twins;
- the same numbers for a cascade whose guard tier is a perfect oracle: a text the scorer
  would pass but with some category score in the uncertain band [lo, threshold) is
  escalated and gets the right answer (a local block stands); the fraction escalated and
  what it buys. For the threshold-free OpenAI table, scores in the band become the label.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.safety import SafetyScorer
from evaluators.safety import taxonomy as tx
from evaluators.safety.category_data import OPENAI_LABELS, CategorySplits, openai_rows
from evaluators.safety.datasets import PROSE_TEST_BOOK, Example

HARM = (tx.VIOLENCE, tx.CRIME, tx.SELF_HARM, tx.SEXUAL, tx.SEXUAL_MINORS, tx.HATE, tx.THREAT)
INPUT = tx.CATEGORIES  # what an input rule blocks on: every harm category, jailbreak and injection
DEFAULT_BAND = (0.5, 1.0)  # escalate a pass whose score is in [0.5, threshold)
# Markov et al. 2023 report per-category AUPRC for their model on this set; the figures
# could not be checked offline while writing this report, so none are quoted here
# (see docs/safety.md).
PAPER_AUPRC: dict[str, float | None] = dict.fromkeys(OPENAI_LABELS)


def _scores(scorer: SafetyScorer, rows: Sequence[Example], chunk: int = 128) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for i in range(0, len(rows), chunk):
        out.extend(scorer.score_batch([r.text for r in rows[i : i + chunk]]))
    return out


def _ap_auc(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not 0 < y.sum() < len(y):
        return None, None
    return round(float(average_precision_score(y, p)), 4), round(float(roc_auc_score(y, p)), 4)


class _Cascade:
    """Decisions of the scorer alone and with a perfect oracle over the uncertain band."""

    def __init__(self, thresholds: dict[str, float], band: tuple[float, float]) -> None:
        self.th = thresholds
        self.band = band
        self.escalated = 0
        self.seen = 0

    def blocked(self, s: dict[str, float], cats: Sequence[str]) -> bool:
        return any(s.get(c, 0.0) >= self.th.get(c, 0.5) for c in cats)

    def uncertain(self, s: dict[str, float], cats: Sequence[str]) -> bool:
        """Not blocked locally, but some category scores in [lo, min(hi, its threshold))."""
        lo, hi = self.band
        return not self.blocked(s, cats) and any(lo <= s.get(c, 0.0) < min(hi, self.th.get(c, 0.5)) for c in cats)

    def decide(self, s: dict[str, float], cats: Sequence[str], truth: bool) -> tuple[bool, bool]:
        """(local decision, cascade decision) for one text whose true answer is ``truth``: a
        local block stands; a text the scorer would pass but finds uncertain goes to the oracle."""
        self.seen += 1
        local = self.blocked(s, cats)
        if self.uncertain(s, cats):
            self.escalated += 1
            return local, truth
        return local, local


def alice_passages(book: Path, chars: int = 1500) -> list[str]:
    """Consecutive paragraphs of *Alice* (after the contents) joined up to ~``chars`` characters:
    long benign prose, to see what reading long texts in windows and chunks flags."""
    from evaluators.safety.datasets import _paragraphs

    if not book.exists():
        return []
    text = book.read_text(encoding="utf-8")
    out: list[str] = []
    cur = ""
    for p in _paragraphs(text[text.index("CHAPTER I.\n") :]):
        if cur and len(cur) + len(p) > chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p
    return out + ([cur] if cur else [])


def _rate(xs: list[bool]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def evaluate(
    scorer: SafetyScorer,
    splits: CategorySplits,
    data_dir: str,
    thresholds: dict[str, float],
    band: tuple[float, float] = DEFAULT_BAND,
) -> dict[str, Any]:
    from evaluators.safety.probes import MUST_BLOCK, MUST_PASS

    t0 = time.perf_counter()
    rep: dict[str, Any] = {"scorer": scorer.name, "thresholds": thresholds, "band": list(band), "sets": {}}
    cascade = _Cascade(thresholds, band)
    sc: dict[str, list[dict[str, float]]] = {name: _scores(scorer, rows) for name, rows in splits.test.items()}

    # 1. OpenAI moderation, held-out half, per paper label
    raw = [(ex, lab) for split, ex, lab in openai_rows(Path(data_dir) / "openai_moderation" / "samples-1680.jsonl.gz")
           if split == "test"]
    by_text = dict(zip([r.text for r in splits.test["openai_moderation"]], sc["openai_moderation"], strict=True))
    om: dict[str, Any] = {}
    lo, hi = band
    for key in OPENAI_LABELS:
        cat = tx.FROM_OPENAI_EVAL[key]
        rows = [(by_text[ex.text][cat], lab[key]) for ex, lab in raw if key in lab]
        p = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        ap, auc = _ap_auc(y, p)
        unc = (p >= lo) & (p < min(hi, thresholds.get(cat, 0.5)))
        po = np.where(unc, y.astype(float), p)  # the oracle answers the uncertain band
        ap_o, auc_o = _ap_auc(y, po)
        om[key] = {"category": cat, "n": len(y), "positives": int(y.sum()), "auprc": ap, "roc_auc": auc,
                   "paper_auprc": PAPER_AUPRC[key], "escalated": round(float(unc.mean()), 4),
                   "auprc_cascade": ap_o, "roc_auc_cascade": auc_o}
    rep["openai_moderation"] = om

    def recall_rows(rows: list[Example], scores: list[dict[str, float]], cats: Sequence[str], want: bool) -> dict[str, Any]:
        before = cascade.escalated
        pairs = [cascade.decide(s, cats, want) for s in scores]
        return {"n": len(rows), "rate": _rate([a for a, _ in pairs]), "rate_cascade": _rate([b for _, b in pairs]),
                "escalated": round((cascade.escalated - before) / max(1, len(rows)), 4)}

    sets = rep["sets"]
    sets["advbench_recall"] = recall_rows(splits.test["advbench"], sc["advbench"], INPUT, True)
    sets["gptfuzz_questions_recall"] = recall_rows(splits.test["gptfuzz_questions"], sc["gptfuzz_questions"], INPUT, True)
    jt = splits.test["gptfuzz_templates"]
    sets["jailbreak_template_recall"] = recall_rows(jt, sc["gptfuzz_templates"], (tx.JAILBREAK,), True)
    sets["jailbreak_template_recall"]["templates"] = len({r.group for r in jt})
    sets["jailbreak_template_blocked_any"] = recall_rows(jt, sc["gptfuzz_templates"], INPUT, True)
    # output side: complied (harmful help) vs refused replies to the 20 held-out questions
    reps, rs = splits.test["gptfuzz_replies"], sc["gptfuzz_replies"]
    comp = [i for i, r in enumerate(reps) if r.group == "reply:1"]
    refu = [i for i, r in enumerate(reps) if r.group == "reply:0"]
    y = np.array([1] * len(comp) + [0] * len(refu))
    p = np.array([max(rs[i].get(c, 0.0) for c in HARM) for i in comp + refu])
    ap, auc = _ap_auc(y, p)
    sets["gptfuzz_replies"] = {
        "auprc_any_harm": ap, "roc_auc_any_harm": auc,
        "complied_blocked": recall_rows([reps[i] for i in comp], [rs[i] for i in comp], HARM, True),
        "refused_blocked": recall_rows([reps[i] for i in refu], [rs[i] for i in refu], HARM, False),
    }
    wa, ws = splits.test["written_attacks"], sc["written_attacks"]
    for cat in (tx.PROMPT_INJECTION, tx.THREAT):
        idx = [i for i, r in enumerate(wa) if r.labels.get(cat)]
        sets[f"written_{cat}_recall"] = recall_rows([wa[i] for i in idx], [ws[i] for i in idx], (cat,), True)
    sets["bipia_injection_recall"] = recall_rows(splits.test["bipia_attacks"], sc["bipia_attacks"], (tx.PROMPT_INJECTION,), True)
    by_pos: dict[str, list[bool]] = {}
    for r, sco in zip(splits.test["bipia_attacks"], sc["bipia_attacks"], strict=True):
        by_pos.setdefault(r.group, []).append(cascade.blocked(sco, (tx.PROMPT_INJECTION,)))
    sets["bipia_injection_recall"]["by_position"] = {k: _rate(v) for k, v in sorted(by_pos.items())}
    sets["bipia_clean_false_positives"] = recall_rows(splits.test["bipia_clean"], sc["bipia_clean"], (tx.PROMPT_INJECTION,), False)
    hc, hs = splits.test["hatecheck"], sc["hatecheck"]
    for cat in (tx.HATE, tx.THREAT):
        y = np.array([r.labels[cat] for r in hc])
        ap, auc = _ap_auc(y, np.array([s[cat] for s in hs]))
        sets[f"hatecheck_{cat}"] = {"n": len(y), "positives": int(y.sum()), "auprc": ap, "roc_auc": auc}
    sets["benign_lookalikes_blocked"] = recall_rows(splits.test["benign_lookalikes"], sc["benign_lookalikes"], INPUT, False)
    per: dict[str, list[bool]] = {}
    for r, s in zip(splits.test["benign_lookalikes"], sc["benign_lookalikes"], strict=True):
        per.setdefault(r.group.split(":")[0], []).append(cascade.blocked(s, INPUT))
    sets["benign_lookalikes_blocked"]["by_imitated_category"] = {k: _rate(v) for k, v in sorted(per.items())}
    mb, ms = splits.test["modern_benign"], sc["modern_benign"]
    for part in ("question", "identity", "reply"):
        idx = [i for i, r in enumerate(mb) if r.group.startswith(part)]
        sets[f"benign_modern_{part}s_blocked"] = recall_rows([mb[i] for i in idx], [ms[i] for i in idx], INPUT, False)
    # long benign prose, never trained on by this head: Alice, ~1,500-character passages
    passages = alice_passages(Path(data_dir) / "gutenberg" / PROSE_TEST_BOOK)
    if passages:
        ps = _scores(scorer, [Example(t, {}, "alice_prose") for t in passages])
        sets["alice_passages_blocked"] = recall_rows([Example(t, {}, "alice_prose") for t in passages], ps, INPUT, False)
        sets["alice_passages_blocked"]["by_category"] = {
            c: _rate([s.get(c, 0.0) >= thresholds.get(c, 0.5) for s in ps]) for c in INPUT}
    sets["hh_redteam_openings_flagged"] = {"n": len(sc["hh_redteam_openings"]),
                                           "rate": _rate([cascade.blocked(s, INPUT) for s in sc["hh_redteam_openings"]])}
    rep["escalated_overall"] = round(cascade.escalated / max(1, cascade.seen), 4)

    probe_scores = scorer.score_batch([t for _, t, _ in MUST_BLOCK] + [t for _, t in MUST_PASS])
    probes = []
    for (name, text, cat), s in zip(MUST_BLOCK, probe_scores, strict=False):
        fired = sorted(c for c in tx.CATEGORIES if s.get(c, 0.0) >= thresholds.get(c, 0.5))
        probes.append({"name": name, "text": text, "must": "block", "expected": cat, "fired": fired,
                       "ok": bool(fired), "score": round(s.get(cat, 0.0), 4)})
    for (name, text), s in zip(MUST_PASS, probe_scores[len(MUST_BLOCK):], strict=True):
        fired = sorted(c for c in INPUT if s.get(c, 0.0) >= thresholds.get(c, 0.5))
        probes.append({"name": name, "text": text, "must": "pass", "fired": fired, "ok": not fired,
                       "max": round(max(s.get(c, 0.0) for c in INPUT), 4)})
    rep["probes"] = probes
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    return rep


def _f(v: Any) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def format_report(rep: dict[str, Any]) -> str:
    th = ", ".join(f"{k} {v:g}" for k, v in rep["thresholds"].items())
    lo, hi = rep["band"]
    lines = [f"scorer {rep['scorer']}   thresholds: {th}",
             f"cascade: a text the scorer passes with a score in [{lo:g}, min({hi:g}, threshold)) goes to a perfect oracle", ""]
    lines.append("OpenAI moderation eval set, held-out half (our category score per paper label):")
    lines.append(f"  {'label':5} {'category':14} {'n':>5} {'pos':>4} {'AUPRC':>6} {'ROC-AUC':>7}  {'paper':>6}  "
                 f"{'escal.':>6} {'AUPRC+oracle':>12} {'ROC+oracle':>10}")
    for k, m in rep["openai_moderation"].items():
        lines.append(f"  {k:5} {m['category']:14} {m['n']:5d} {m['positives']:4d} {_f(m['auprc']):>6} {_f(m['roc_auc']):>7}  "
                     f"{'n/a':>6}  {m['escalated']:6.3f} {_f(m['auprc_cascade']):>12} {_f(m['roc_auc_cascade']):>10}")
    lines += ["", f"  {'set':40} {'n':>5} {'rate':>6} {'+oracle':>8} {'escal.':>7}"]

    def row(name: str, m: dict[str, Any]) -> None:
        lines.append(f"  {name:40} {m['n']:5d} {_f(m.get('rate')):>6} {_f(m.get('rate_cascade')):>8} "
                     f"{_f(m.get('escalated')):>7}")

    for name, m in rep["sets"].items():
        if name == "gptfuzz_replies":
            lines.append(f"  gptfuzz replies (held-out questions): AUPRC {_f(m['auprc_any_harm'])}, ROC-AUC "
                         f"{_f(m['roc_auc_any_harm'])} (complied vs refused, max harm score)")
            row("  complied replies blocked (recall)", m["complied_blocked"])
            row("  refused replies blocked (FPR)", m["refused_blocked"])
        elif "auprc" in m:
            lines.append(f"  {name:40} {m['n']:5d}  pos {m['positives']}  AUPRC {_f(m['auprc'])}  ROC-AUC {_f(m['roc_auc'])}")
        else:
            row(name, m)
            for key in ("by_position", "by_category"):
                if key in m:
                    lines.append(f"      {key.replace('_', ' ')}: " + ", ".join(f"{k} {_f(v)}" for k, v in m[key].items()))
            if "by_imitated_category" in m:
                lines.append("      by imitated category: " + ", ".join(f"{k} {_f(v)}" for k, v in m["by_imitated_category"].items()))
    lines.append(f"\n  texts escalated overall (sets above): {rep['escalated_overall']:.3f}")
    lines += ["", "probes:"]
    for p in rep["probes"]:
        ok = "ok  " if p["ok"] else "FAIL"
        extra = f"expected {p['expected']}, score {p['score']:.3f}" if p["must"] == "block" else f"max {p['max']:.3f}"
        lines.append(f"  {ok} {p['must']:5} {p['name']:20} fired {p['fired'] or '-'}  {extra}   {p['text'][:60]}")
    return "\n".join(lines)


__all__ = ["DEFAULT_BAND", "evaluate", "format_report"]

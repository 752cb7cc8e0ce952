"""Labelled safety data and its fixed, template-disjoint splits.

Used by ``tuning.train_safety_head`` (train/val) and ``evaluators.safety.quality``
(held-out test sets), so both always agree on what was held out. Sources, both
CC BY 4.0 (see each directory's SOURCE.md):

- HateCheck (Röttger et al., ACL 2021): split by template group (a case's
  ``ref_templ_id`` if it has one, else its ``templ_id``), so a held-out template's
  contrastive variants are held out with it.
- Conversation AI bias templates (Jigsaw / Conversation AI,
  unintended-ml-bias-analysis): split by sentence template; the intersectional
  madlibs and the Wikipedia identity comments are never trained on (~30% of the
  Wikipedia comments, by rev_id hash, pick the head's hyper-parameters; the
  other ~70%, and the same rows of the fuzzed twin, are the test set).

Labels: a row carries a value only for the labels its source can honestly give.
``identity_attack`` = HateCheck ``hateful`` (every hateful case targets a protected
group) / a toxic identity template that names an identity. ``toxicity`` = hateful,
plus HateCheck's abuse of non-protected people (``target_indiv_nh``,
``target_group_nh``: not hate, but toxic); HateCheck's non-hateful profanity is
left out of ``toxicity`` (annotators of toxicity disagree on it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TRAINED_LABELS: tuple[str, ...] = ("toxicity", "identity_attack")
DEFAULT_DATA_DIR = Path(os.environ.get("GATEHOUSE_DATA_DIR", "/work/shared/data"))

HATECHECK_TOXIC_NOT_HATE = {"target_indiv_nh", "target_group_nh"}
HATECHECK_TOXICITY_UNLABELLED = {"profanity_nh"}
IDENTITY_VAL_TEMPLATES = {"you_are_adj"}
IDENTITY_TEST_TEMPLATES = {"being_adj", "verb_adj"}
WIKI_DEV_BUCKETS = 3  # of 10: ~30% of the Wikipedia identity comments choose the head


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict[str, int]  # only the labels this row can give
    source: str
    group: str = ""  # template / functionality, for breakdowns
    mentions_identity: bool = False


@dataclass
class Splits:
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)  # model selection only, never fitted on
    test: dict[str, list[Example]] = field(default_factory=dict)  # name -> held-out set
    files: dict[str, str] = field(default_factory=dict)  # source file -> sha256


def _bucket(key: str, n: int = 10) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hatecheck_examples(path: Path) -> list[tuple[str, Example]]:
    """(split, example) for every HateCheck case; split by template group."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            group = r["ref_templ_id"] or r["templ_id"]
            b = _bucket(f"hatecheck:{group}")
            split = "test" if b < 2 else "val" if b == 2 else "train"
            hateful = int(r["label_gold"] == "hateful")
            labels = {"identity_attack": hateful}
            func = r["functionality"]
            if func not in HATECHECK_TOXICITY_UNLABELLED:
                labels["toxicity"] = int(hateful or func in HATECHECK_TOXIC_NOT_HATE)
            out.append(
                (
                    split,
                    Example(
                        r["test_case"].strip(), labels, "hatecheck", func,
                        mentions_identity=bool(r["target_ident"]),
                    ),
                )
            )
    return out


def identity_template_examples(path: Path) -> list[tuple[str, Example]]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            t = r["template"]
            split = "test" if t in IDENTITY_TEST_TEMPLATES else "val" if t in IDENTITY_VAL_TEMPLATES else "train"
            toxic = int(r["toxicity"] == "toxic")
            has_ident = bool(r["identity_term"])
            labels = {"toxicity": toxic, "identity_attack": int(toxic and has_ident)}
            out.append((split, Example(r["phrase"], labels, "identity_templates", t, has_ident)))
    return out


def madlib_examples(path: Path) -> list[Example]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            Example(
                r["phrase"],
                {"toxicity": int(r["toxicity"] == "toxic"), "identity_attack": int(r["toxicity"] == "toxic")},
                "intersectional_madlibs", r["template"], True,
            )
            for r in csv.DictReader(f)
        ]


def wikipedia_examples(path: Path, source: str) -> list[Example]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            Example(r["comment"], {"toxicity": int(r["toxic"] == "True")}, source, r["rev_id"], True)
            for r in csv.DictReader(f)
        ]


def _stratified_sample(rows: list[Example], n: int, seed: int, label: str = "toxicity") -> list[Example]:
    if len(rows) <= n:
        return rows
    rng = random.Random(seed)
    pos = [r for r in rows if r.labels.get(label)]
    neg = [r for r in rows if not r.labels.get(label)]
    k = round(n * len(pos) / len(rows))
    return rng.sample(pos, k) + rng.sample(neg, n - k)


def load_splits(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    name_adj_train: int = 8000,
    madlib_test: int = 2000,
    seed: int = 0,
) -> Splits:
    """Load every source and split it. ``name_adj`` (72k near-identical rows) is subsampled."""
    d = Path(data_dir)
    hc = d / "hatecheck" / "test_suite_cases.csv"
    it = d / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv"
    ml = d / "conversationai_bias_eval" / "en_intersectional_madlibs.csv"
    wk = d / "conversationai_bias_eval" / "toxicity_nonfuzzed_testset.csv"
    wf = d / "conversationai_bias_eval" / "toxicity_fuzzed_testset.csv"
    for p in (hc, it, ml, wk, wf):
        if not p.exists():
            raise FileNotFoundError(f"missing {p}; set GATEHOUSE_DATA_DIR or pass --data to the data directory")
    s = Splits(files={str(p.relative_to(d)): _sha256(p) for p in (hc, it, ml, wk, wf)})
    hc_test: list[Example] = []
    it_test: list[Example] = []
    name_adj: list[Example] = []
    for split, ex in hatecheck_examples(hc):
        {"train": s.train, "val": s.val, "test": hc_test}[split].append(ex)
    for split, ex in identity_template_examples(it):
        if split == "train" and ex.group == "name_adj":
            name_adj.append(ex)
        else:
            {"train": s.train, "val": s.val, "test": it_test}[split].append(ex)
    s.train.extend(_stratified_sample(name_adj, name_adj_train, seed))
    # A slice of the real Wikipedia comments is used only to choose the head's kind and
    # regularisation (the templates cannot show domain shift); the rest is the test set.
    wiki = wikipedia_examples(wk, "wikipedia_identity")
    wiki_fuzzed = wikipedia_examples(wf, "wikipedia_identity_fuzzed")
    dev = [_bucket(f"wikipedia:{r.group}") < WIKI_DEV_BUCKETS for r in wiki]  # by rev_id
    s.dev = [r for r, d in zip(wiki, dev, strict=True) if d]
    s.test = {
        "hatecheck_heldout_templates": hc_test,
        "identity_heldout_templates": it_test,
        "intersectional_madlibs": _stratified_sample(madlib_examples(ml), madlib_test, seed),
        "wikipedia_identity": [r for r, d in zip(wiki, dev, strict=True) if not d],
        "wikipedia_identity_fuzzed": [r for r, d in zip(wiki_fuzzed, dev, strict=True) if not d],
    }
    return s


def rows_sha256(rows: Iterable[Example]) -> str:
    """Hash of the exact rows (text, labels, source) a head was trained on."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.text, sorted(r.labels.items()), r.source], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()

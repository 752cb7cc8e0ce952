"""Labelled safety data and its fixed, template-disjoint splits.

Used by ``tuning.train_safety_head`` (train/val) and ``evaluators.safety.quality``
(held-out test sets), so both always agree on what was held out. Sources, both
CC BY 4.0 (see each directory's SOURCE.md):

- HateCheck (Röttger et al., ACL 2021): split by template group (a case's
  ``ref_templ_id`` if it has one, else its ``templ_id``), so a held-out template's
  contrastive variants are held out with it.
- Conversation AI bias templates (Jigsaw / Conversation AI,
  unintended-ml-bias-analysis): split by sentence template; the intersectional
  madlibs are never trained on. The Wikipedia identity comments are split by
  rev_id hash: ~20% are training rows for ``toxicity`` (the only real,
  non-template toxic text here; the head's weakest set was real comments), ~10%
  pick the head's hyper-parameters, and the other ~70%, with the same rows of
  the fuzzed twin, are the test set.

Labels: a row carries a value only for the labels its source can honestly give.
``identity_attack`` = HateCheck ``hateful`` (every hateful case targets a protected
group) / a toxic identity template that names an identity. ``toxicity`` = hateful,
plus HateCheck's abuse of non-protected people (``target_indiv_nh``,
``target_group_nh``: not hate, but toxic); HateCheck's non-hateful profanity is
left out of ``toxicity`` (annotators of toxicity disagree on it).

Benign prose (public domain in the US, Project Gutenberg; see
``gutenberg/SOURCE.md``): the templates' negatives are all short sentences, so
ordinary prose and one-word inputs were scored as toxic. Pride and Prejudice,
Frankenstein and The Adventures of Sherlock Holmes give label-0 negatives for
both labels (sentences, 160-320-character spans — the sizes the streaming
hold-back checks — and single common words / short sentence openings from
their vocabulary), split into train/val by block of paragraphs. *Alice's
Adventures in Wonderland* is never trained on: all of it is the held-out prose
false-positive test set (the demo protects Alice chapter I with a recitation
check).

Modern benign text (source ``modern_benign``; written by us, Apache-2.0, see
``benign_templates``): with only 19th-century prose and template sentences as
negatives, present-day questions about people ("What are common mistakes people
make with unit testing?") were flagged. Template-generated user questions and
requests on everyday and technical topics (mostly about people and groups),
benign mentions of the identity terms of the Conversation AI templates, and 1-4
sentence assistant-style replies give label-0 rows for both labels. Split by
frame *and* by topic (identity term, for identity frames) with explicit lists:
test = held-out frame x held-out topic, val likewise, train = the rest of both;
the test rows are the held-out modern false-positive sets (``Splits.modern_test``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from evaluators.safety.head import sha256_file
from gatehouse_core.datadir import data_dir as resolve_data_dir

TRAINED_LABELS: tuple[str, ...] = ("toxicity", "identity_attack")

HATECHECK_TOXIC_NOT_HATE = {"target_indiv_nh", "target_group_nh"}
HATECHECK_TOXICITY_UNLABELLED = {"profanity_nh"}
IDENTITY_VAL_TEMPLATES = {"you_are_adj"}
IDENTITY_TEST_TEMPLATES = {"being_adj", "verb_adj"}
# Wikipedia identity comments by rev_id hash bucket (of 10): [0, 2) train (toxicity only),
# [2, 3) choose the head, [3, 10) test
WIKI_TRAIN_BUCKETS = 2
WIKI_DEV_BUCKETS = 3

# Benign prose (label 0 for every trained label). Train books vs the held-out book.
PROSE_TRAIN_BOOKS = (
    "pride_and_prejudice_pg1342.txt",
    "frankenstein_pg84.txt",
    "adventures_of_sherlock_holmes_pg1661.txt",
)
PROSE_TEST_BOOK = "alice_in_wonderland_pg11.txt"
PROSE_BLOCK = 20  # paragraphs per split block (val = sha256 bucket 0 of 10)
PROSE_SENTENCES = 500  # per train book
PROSE_SPANS = 800  # per train book, lengths uniform in [160, 320] characters
SHORT_WORDS = 900  # single common words / 2-3-word sentence openings, all train books
SHORT_VOCAB_MIN_COUNT = 10

# Modern benign text (label 0 for every trained label), from benign_templates.
MODERN_QUESTIONS = 1500  # train rows drawn from train frames x train topics x WHO (val: 15%)
MODERN_REPLIES = 1200  # train replies of 1-4 sentences (val: 15%)
MODERN_TEST_REPLIES = 400
MODERN_TEST_WHO = 3  # subjects per test (frame, topic) pair: "people" plus two drawn
MODERN_TEST_SETS = {"question": "modern_questions", "identity": "modern_identity", "reply": "modern_replies"}


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict[str, int]  # only the labels this row can give
    source: str
    group: str = ""  # template / functionality, for breakdowns
    mentions_identity: bool = False
    planted: str = ""  # an attack inserted into ``text`` (BIPIA), so its chunks can be labelled


@dataclass
class Splits:
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)  # model selection only, never fitted on
    test: dict[str, list[Example]] = field(default_factory=dict)  # name -> held-out set
    prose_test: dict[str, list[Example]] = field(default_factory=dict)  # benign prose only (Alice)
    modern_test: dict[str, list[Example]] = field(default_factory=dict)  # benign modern text only
    files: dict[str, str] = field(default_factory=dict)  # source file -> sha256


def _bucket(key: str, n: int = 10) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


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


def _paragraphs(text: str) -> list[str]:
    """Paragraphs of a Gutenberg plain text, line wraps kept (as a model would recite them)."""
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+(?:[’'][a-z]+)?", text)


def identity_terms(data_dir: str | Path | None = None) -> set[str]:
    """Lower-cased words of every identity term / HateCheck target and of every HateCheck
    slur case: never used as a one-word negative, so no word the hate data teaches as a
    target or slur is also taught as benign on its own."""
    d = resolve_data_dir(data_dir)
    out: set[str] = set()
    with open(d / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.update(w.lower() for w in _words(r["identity_term"]))
    with open(d / "hatecheck" / "test_suite_cases.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.update(w.lower() for w in _words(r["target_ident"]))
            if "slur" in r["functionality"] or "profanity" in r["functionality"]:
                out.update(w.lower() for w in _words(r["test_case"]))
    return out


def prose_examples(
    book: Path, *, sentences: int, spans: int, seed: int
) -> tuple[list[Example], list[Example], list[str]]:
    """(train, val, train sentences) label-0 examples from one book, split by paragraph block.

    Spans are 160-320 characters long; half start at a paragraph start (as a streamed
    reply's first hold-back window does), half at a random character (mid-word cuts
    included, as later windows are cut)."""
    from evaluators.safety.windows import split_sentences

    paras = _paragraphs(book.read_text(encoding="utf-8"))
    rng = random.Random(f"{seed}:{book.name}")
    train: list[Example] = []
    val: list[Example] = []
    train_sents: list[str] = []
    blocks = [paras[i : i + PROSE_BLOCK] for i in range(0, len(paras), PROSE_BLOCK)]
    split = {i: ("val" if _bucket(f"prose:{book.name}:{i}") == 0 else "train") for i in range(len(blocks))}
    sents: dict[str, list[str]] = {k: [] for k in ("train", "val")}
    texts: dict[str, list[str]] = {k: [] for k in ("train", "val")}
    for i, blk in enumerate(blocks):
        body = "\n\n".join(blk)
        texts[split[i]].append(body)
        sents[split[i]].extend(s for p in blk for s in split_sentences(" ".join(p.split())) if len(s) >= 3)
    train_sents = sents["train"]
    for k, out in (("train", train), ("val", val)):
        frac = 1.0 if k == "train" else 0.15  # val gets ~15% of the train count
        n_s = min(len(sents[k]), round(sentences * frac))
        for t in rng.sample(sents[k], n_s):
            out.append(Example(t, {"toxicity": 0, "identity_attack": 0}, "gutenberg_prose", f"{book.stem}:sentence"))
        long_texts = [t for t in texts[k] if len(t) > 320]
        for j in range(round(spans * frac)):
            t = rng.choice(long_texts)
            n = rng.randint(160, 320)
            if j % 2:  # a random offset, mid-word cuts included
                a = rng.randrange(0, len(t) - n)
            else:  # the start of a paragraph, as the start of a streamed reply
                starts = [0] + [m.end() for m in re.finditer(r"\n\n", t[: len(t) - n])]
                a = rng.choice(starts)
            out.append(Example(t[a : a + n], {"toxicity": 0, "identity_attack": 0}, "gutenberg_prose", f"{book.stem}:span"))
    return train, val, train_sents


def short_examples(sentences: list[str], excluded: set[str], n: int, seed: int) -> list[Example]:
    """Very short benign inputs, sampled (not hand-written) from the train books: a common
    word (seen >= SHORT_VOCAB_MIN_COUNT times, not an identity term / slur) in lower, Title
    or bare case with optional end punctuation, or the first 2-3 words of a sentence."""
    rng = random.Random(f"{seed}:short")
    counts = Counter(w.lower() for s in sentences for w in _words(s))
    vocab = sorted(w for w, c in counts.items() if c >= SHORT_VOCAB_MIN_COUNT and w not in excluded)
    openings = []
    for s in sentences:
        ws = s.split()
        if len(ws) >= 3:
            opening = " ".join(ws[: rng.choice((2, 3))]).rstrip(",;:")
            if not any(w.lower() in excluded for w in _words(opening)):
                openings.append(opening)
    out = []
    for i in range(n):
        if i % 3 == 2:
            t = rng.choice(openings)
        else:
            w = rng.choice(vocab)
            w = rng.choice((w, w.capitalize()))
            t = w + rng.choice(("", "", ".", "!", "?"))
        out.append(Example(t, {"toxicity": 0, "identity_attack": 0}, "gutenberg_short", "short"))
    return out


def alice_test_sets(book: Path) -> dict[str, list[Example]]:
    """All of Alice, as sentences and as consecutive 160- and 320-character spans."""
    from evaluators.safety.windows import split_sentences

    text = book.read_text(encoding="utf-8")
    paras = _paragraphs(text)
    neg = {"toxicity": 0, "identity_attack": 0}
    sents = [s for p in paras for s in split_sentences(" ".join(p.split())) if len(s) >= 3]
    body = text[text.index("CHAPTER I.\n") :]  # the text after the table of contents
    out = {"alice_sentences": [Example(s, neg, "alice_prose", "sentence") for s in sents]}
    for n in (160, 320):
        out[f"alice_spans_{n}"] = [
            Example(body[a : a + n], neg, "alice_prose", f"span{n}") for a in range(0, len(body) - n + 1, n)
        ]
    return out


def identity_groups(path: Path) -> dict[str, str]:
    """Identity term -> category, for every term of the Conversation AI templates (the
    ``identity_term`` / ``identity_category`` columns of ``path``)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {r["identity_term"]: r["identity_category"] for r in csv.DictReader(f) if r["identity_term"]}


def _fill(frame: str, *, topic: str = "", who: str = "", ident: str = "") -> str:
    def cap(s: str) -> str:
        return s[:1].upper() + s[1:]

    return frame.format(topic=topic, Topic=cap(topic), who=who, Who=cap(who), ident=ident)


def _split_of(name: str, test: frozenset[str], val: frozenset[str]) -> str:
    return "test" if name in test else "val" if name in val else "train"


def modern_benign_examples(identities: dict[str, str], *, seed: int) -> list[tuple[str, Example]]:
    """(split, example) label-0 modern text from ``benign_templates``, split by frame and
    by topic / identity term (see that module): a (frame, slot value) pair is generated
    only when both fall in the same split. ``group`` is ``part:frame[+frame...]:slot``,
    part one of question / identity / reply.

    Train and val sample frame x topic x WHO; test has every held-out (frame, topic)
    pair, with "people" and two more subjects when the frame has one. A sixth of the
    questions are typed casually (lower-case start, no end punctuation)."""
    from evaluators.safety import benign_templates as bt

    rng = random.Random(f"{seed}:modern")
    neg = {"toxicity": 0, "identity_attack": 0}
    splits = ("train", "val", "test")
    topics = {k: [t for t in bt.TOPICS if _split_of(t, bt.TEST_TOPICS, bt.VAL_TOPICS) == k] for k in splits}
    out: list[tuple[str, Example]] = []
    seen: set[str] = set()

    def add(split: str, text: str, group: str, identity: bool = False) -> None:
        if text not in seen:
            seen.add(text)
            out.append((split, Example(text, dict(neg), "modern_benign", group, identity)))

    # questions and requests
    others = [w for w in bt.WHO if w != bt.TEST_WHO_FIRST]
    for split in splits:
        frames = [f for f in bt.QUESTION_FRAMES
                  if _split_of(f, bt.TEST_QUESTION_FRAMES, bt.VAL_QUESTION_FRAMES) == split]
        pool = []
        for fid in frames:
            for t in topics[split]:
                if "{who}" not in bt.QUESTION_FRAMES[fid]:
                    pool.append((fid, t, ""))
                elif split == "test":
                    pool += [(fid, t, w) for w in [bt.TEST_WHO_FIRST, *rng.sample(others, MODERN_TEST_WHO - 1)]]
                else:
                    pool += [(fid, t, w) for w in bt.WHO]
        if split != "test":
            n = MODERN_QUESTIONS if split == "train" else round(0.15 * MODERN_QUESTIONS)
            pool = rng.sample(pool, min(n, len(pool)))
        for fid, t, w in pool:
            text = _fill(bt.QUESTION_FRAMES[fid], topic=t, who=w)
            # the test pairs' "people" variant keeps its exact wording (the named probe)
            if rng.random() < 1 / 6 and not (split == "test" and w == bt.TEST_WHO_FIRST):
                text = text[:1].lower() + text[1:].rstrip("?.!")
            add(split, text, f"question:{fid}:{t}")

    # assistant-style replies: 1-4 sentences of one split's frames, one topic and subject
    r_frames = {k: [f for f in bt.REPLY_FRAMES if _split_of(f, bt.TEST_REPLY_FRAMES, bt.VAL_REPLY_FRAMES) == k]
                for k in splits}
    for split, n in (("train", MODERN_REPLIES), ("val", round(0.15 * MODERN_REPLIES)), ("test", MODERN_TEST_REPLIES)):
        for _ in range(n):
            t, w = rng.choice(topics[split]), rng.choice(bt.WHO)
            fids = rng.sample(r_frames[split], min(rng.choice((1, 2, 2, 3, 3, 4)), len(r_frames[split])))
            text = " ".join(_fill(bt.REPLY_FRAMES[f], topic=t, who=w) for f in fids)
            add(split, text, f"reply:{'+'.join(fids)}:{t}")

    # benign mentions of identity groups: every frame x term the frame reads well with
    for fid, (frame, categories) in bt.IDENTITY_FRAMES.items():
        split = _split_of(fid, bt.TEST_IDENTITY_FRAMES, bt.VAL_IDENTITY_FRAMES)
        for term, category in sorted(identities.items()):
            if _split_of(term, bt.TEST_IDENTITIES, bt.VAL_IDENTITIES) == split and category in categories:
                add(split, _fill(frame, ident=bt.IDENTITY_DISPLAY.get(term, term)), f"identity:{fid}:{term}", True)
    return out


def _stratified_sample(rows: list[Example], n: int, seed: int, label: str = "toxicity") -> list[Example]:
    if len(rows) <= n:
        return rows
    rng = random.Random(seed)
    pos = [r for r in rows if r.labels.get(label)]
    neg = [r for r in rows if not r.labels.get(label)]
    k = round(n * len(pos) / len(rows))
    return rng.sample(pos, k) + rng.sample(neg, n - k)


def load_splits(
    data_dir: str | Path | None = None,
    *,
    name_adj_train: int = 8000,
    madlib_test: int = 2000,
    seed: int = 0,
    prose: bool = True,
    modern: bool = True,
) -> Splits:
    """Load every source and split it. ``name_adj`` (72k near-identical rows) is subsampled."""
    d = resolve_data_dir(data_dir)
    hc = d / "hatecheck" / "test_suite_cases.csv"
    it = d / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv"
    ml = d / "conversationai_bias_eval" / "en_intersectional_madlibs.csv"
    wk = d / "conversationai_bias_eval" / "toxicity_nonfuzzed_testset.csv"
    wf = d / "conversationai_bias_eval" / "toxicity_fuzzed_testset.csv"
    for p in (hc, it, ml, wk, wf):
        if not p.exists():
            raise FileNotFoundError(f"missing {p}; set GATEHOUSE_DATA_DIR or pass --data to the data directory")
    s = Splits(files={str(p.relative_to(d)): sha256_file(p) for p in (hc, it, ml, wk, wf)})
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
    # Real Wikipedia comments: a slice trains toxicity, a slice chooses the head's kind and
    # regularisation (the templates cannot show domain shift), the rest is the test set.
    wiki = wikipedia_examples(wk, "wikipedia_identity")
    wiki_fuzzed = wikipedia_examples(wf, "wikipedia_identity_fuzzed")
    buckets = [_bucket(f"wikipedia:{r.group}") for r in wiki]  # by rev_id
    dev = [b < WIKI_DEV_BUCKETS for b in buckets]  # train or dev: out of the test set
    s.train.extend(r for r, b in zip(wiki, buckets, strict=True) if b < WIKI_TRAIN_BUCKETS)
    s.dev = [r for r, b in zip(wiki, buckets, strict=True) if WIKI_TRAIN_BUCKETS <= b < WIKI_DEV_BUCKETS]
    s.test = {
        "hatecheck_heldout_templates": hc_test,
        "identity_heldout_templates": it_test,
        "intersectional_madlibs": _stratified_sample(madlib_examples(ml), madlib_test, seed),
        "wikipedia_identity": [r for r, d in zip(wiki, dev, strict=True) if not d],
        "wikipedia_identity_fuzzed": [r for r, d in zip(wiki_fuzzed, dev, strict=True) if not d],
    }
    if prose:
        g = d / "gutenberg"
        books = [g / b for b in PROSE_TRAIN_BOOKS]
        for p in (*books, g / PROSE_TEST_BOOK):
            if not p.exists():
                raise FileNotFoundError(f"missing {p}; set GATEHOUSE_DATA_DIR or pass --data to the data directory")
            s.files[str(p.relative_to(d))] = sha256_file(p)
        excluded = identity_terms(d)
        train_sents: list[str] = []
        for b in books:
            tr, va, ts = prose_examples(b, sentences=PROSE_SENTENCES, spans=PROSE_SPANS, seed=seed)
            s.train.extend(tr)
            s.val.extend(va)
            train_sents.extend(ts)
        s.train.extend(short_examples(train_sents, excluded, SHORT_WORDS, seed))
        s.prose_test = alice_test_sets(g / PROSE_TEST_BOOK)
    if modern:
        for split, ex in modern_benign_examples(identity_groups(it), seed=seed):
            if split == "test":
                s.modern_test.setdefault(MODERN_TEST_SETS[ex.group.split(":")[0]], []).append(ex)
            else:
                {"train": s.train, "val": s.val}[split].append(ex)
    return s


def rows_sha256(rows: Iterable[Example]) -> str:
    """Hash of the exact rows (text, labels, source) a head was trained on."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.text, sorted(r.labels.items()), r.source], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()

"""Labelled data for the harm-category scorer, and its fixed held-out splits.

Used by ``tuning.train_safety_categories`` (train / val) and ``evaluators.safety.quality``
(the held-out sets), so both agree on what was held out. A row carries a label only
for the categories its source can honestly give (``Example.labels``); training masks
the rest. Sources (each folder's SOURCE.md under the data directory gives origin and
licence):

- ``openai_moderation`` (Markov et al. 2023, MIT): the paper's 1,680-text evaluation
  set, split by a hash of the text: 50% held out (the report's table), 10% val, 40%
  train. Its 8 labels map to ours by ``taxonomy.FROM_OPENAI_EVAL``.
- ``advbench`` (Zou et al. 2023, MIT): 520 harmful requests, split by a hash of the
  request (30% test, 10% val). Category from ``request_category``.
- ``gptfuzz`` (Yu et al. 2023, MIT): the upstream split of its 100 questions (80 with
  train responses, 20 with evaluate responses: the 20 are held out); the 77 jailbreak
  templates split by template id (20 held out, 8 val). A template filled with a
  question is ``jailbreak`` (and the question's category); filled with a benign
  question it is ``jailbreak`` only. Replies labelled complied / refused give the
  output side: a complying reply is positive for its question's category.
- ``bipia`` (Yi et al. 2023, MIT): its own train / test split. An attack instruction
  inserted into an email context (start, middle or end) is ``prompt_injection``; the
  clean email is negative for every category.
- ``hatecheck`` (Röttger et al. 2021, CC BY 4.0): split by template group as before;
  hateful cases are ``hate``, the threat functionalities also ``threat``.
- ``hh_rlhf_harmless_test`` (Bai et al. 2022, MIT): the red-team opening turns, split by
  hash (30% test). They carry no category labels, so a turn is a positive only for the
  category ``request_category`` finds by keyword, and unlabelled otherwise; the
  held-out turns are reported as a flag rate, not a recall.
- ``lookalikes`` and ``modern_benign`` (ours, Apache-2.0): benign negatives for every
  category, held out by frame (``evaluators.safety.lookalikes``, ``benign_templates``).
- ``written_attacks`` (ours, Apache-2.0): direct prompt injections and threats against a
  person, which the public data lacks, held out by frame (``attack_templates``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.safety import taxonomy as tx
from evaluators.safety.attack_templates import attacks as written_attacks
from evaluators.safety.datasets import (
    Example,
    hatecheck_examples,
    identity_groups,
    modern_benign_examples,
)
from evaluators.safety.head import sha256_file
from evaluators.safety.lookalikes import lookalikes

HARM = (tx.VIOLENCE, tx.CRIME, tx.SELF_HARM, tx.SEXUAL, tx.SEXUAL_MINORS, tx.HATE, tx.THREAT)
ALL = tx.CATEGORIES
OPENAI_LABELS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
TEMPLATE_SLOT = "[INSERT PROMPT HERE]"
GPTFUZZ_TEST_TEMPLATES = 20
GPTFUZZ_VAL_TEMPLATES = 8
FILLS_PER_TEMPLATE = 6  # harmful questions per train template (+ 3 benign)
REPLY_CHARS = 1200  # replies are trained on their first 1,200 characters (MiniLM reads ~256 tokens)
TRAIN_REPLIES = 1000  # of GPTFuzz's 6,160 train replies (of train questions), stratified by label
TEST_REPLIES = 400  # of its 1,540 evaluate replies (the 20 held-out questions), stratified by label

# Keyword rules that give a harmful request its category (first match wins). Used
# only where a source says "harmful" but not which harm (AdvBench, GPTFuzz questions,
# hh-rlhf red-team turns); a request that matches nothing is ``crime`` for the first
# two (both are lists of illegal-help requests) and unlabelled for hh-rlhf.
_RULES: tuple[tuple[str, str], ...] = (
    (tx.SEXUAL_MINORS, r"\b(child|children|minor|minors|underage|kid|kids)\b.*\b(sex|sexual|porn|nude)|\b(sex|sexual|porn|nude)\w*\b.*\b(child|children|minor|minors|underage)\b|\bpedophil"),
    (tx.SELF_HARM, r"\b(suicide|suicidal|self[- ]harm|kill (myself|yourself|themselves)|cut (myself|yourself)|anorexi|bulimi|eating disorder|starv(e|ing) (myself|yourself))"),
    (tx.SEXUAL, r"\b(porn|pornograph|sexual|sexually|sex|explicit|erotic|nude|nudes|orgasm|genital)"),
    (tx.THREAT, r"\b(threaten|threatening|threat|intimidat|blackmail|extort)"),
    (tx.VIOLENCE, r"\b(bomb|bombs|explosive|explosives|weapon|weapons|gun|guns|firearm|firearms|rifle|ammo|ammunition|kill|killing|murder|assassinat|poison|poisoning|shoot|shooting|stab|attack (someone|a person|people)|terror|terrorist|terrorism|massacre|torture|violent|violence|hurt (someone|people|him|her)|injur|bioweapon|nerve agent|chemical weapon|arson|burn (down|a|someone)|hijack|kidnap|assault|beat (up|someone))"),
    (tx.HATE, r"\b(racist|racism|hate speech|hateful|white supremac|nazi|ethnic cleansing|discriminat|slur|harass|bully|bullying|cyberbully|demean|inferior race|misogyn|homophob|transphob|antisemit)"),
    (tx.CRIME, r"\b(hack|hacking|hacker|malware|virus|ransomware|phishing|steal|stealing|stolen|theft|fraud|scam|counterfeit|launder|laundering|drug|drugs|cocaine|heroin|meth|methamphetamine|fentanyl|illegal|illegally|smuggl|shoplift|pirat|crack (a|the|into)|password|insider trading|embezzl|forge|forged|forgery|identity theft|tax evasion|evade taxes|cheat|bribe|rob|robbing|robbery|burglar|break into|break in|spyware|keylogger|ddos|exploit)"),
)
_COMPILED = tuple((cat, re.compile(rx, re.IGNORECASE)) for cat, rx in _RULES)


def request_category(text: str) -> str | None:
    """The category a harmful request asks for, by the keyword rules above (or None)."""
    for cat, rx in _COMPILED:
        if rx.search(text):
            return cat
    return None


def _bucket(key: str, n: int = 10) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


def _split(key: str, test: int, val: int) -> str:
    b = _bucket(key)
    return "test" if b < test else "val" if b < test + val else "train"


def _labels(positive: dict[str, int], negative_rest: bool, only: tuple[str, ...] = ALL) -> dict[str, int]:
    """``positive`` plus, if ``negative_rest``, 0 for every other category in ``only``."""
    out = {c: 0 for c in only} if negative_rest else {}
    out.update(positive)
    return out


@dataclass
class CategorySplits:
    train: list[Example] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)
    test: dict[str, list[Example]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # source file -> sha256

    def add(self, split: str, set_name: str, ex: Example) -> None:
        if split == "test":
            self.test.setdefault(set_name, []).append(ex)
        else:
            (self.train if split == "train" else self.val).append(ex)


def openai_rows(path: Path) -> list[tuple[str, Example, dict[str, int]]]:
    """(split, example, the paper's own labels) for the OpenAI moderation set."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            text = r["prompt"]
            raw = {k: int(r[k]) for k in OPENAI_LABELS if k in r}
            labels: dict[str, int] = {}
            for cat in set(tx.FROM_OPENAI_EVAL.values()):
                keys = [k for k, c in tx.FROM_OPENAI_EVAL.items() if c == cat]
                known = [raw[k] for k in keys if k in raw]
                if any(known):
                    labels[cat] = 1
                elif known and len(known) == len(keys):
                    labels[cat] = 0
            split = _split(f"openai:{text}", 5, 1)
            out.append((split, Example(text, labels, "openai_moderation"), raw))
    return out


def load_category_splits(data_dir: str | Path, *, seed: int = 0) -> CategorySplits:
    d = Path(data_dir)
    need = {
        "openai": d / "openai_moderation" / "samples-1680.jsonl.gz",
        "advbench": d / "advbench" / "harmful_behaviors.txt",
        "questions": d / "gptfuzz" / "question_list.csv",
        "templates": d / "gptfuzz" / "jailbreak_templates.csv",
        "replies_train": d / "gptfuzz" / "responses_labeled_train.csv",
        "replies_eval": d / "gptfuzz" / "responses_labeled_evaluate.csv",
        "hatecheck": d / "hatecheck" / "test_suite_cases.csv",
        "hh": d / "hh_rlhf_harmless_test" / "harmless-base_test.jsonl",
        "identity": d / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv",
    }
    for split in ("train", "test"):
        need[f"bipia_email_{split}"] = d / "bipia" / f"email_{split}.jsonl"
        need[f"bipia_text_{split}"] = d / "bipia" / f"text_attack_{split}.json"
        need[f"bipia_code_{split}"] = d / "bipia" / f"code_attack_{split}.json"
    for p in need.values():
        if not p.exists():
            raise FileNotFoundError(f"missing {p}; pass --data (or set GATEHOUSE_DATA_DIR) to the data directory")
    s = CategorySplits(files={str(p.relative_to(d)): sha256_file(p) for p in need.values()})
    rng = random.Random(seed)

    for split, ex, _ in openai_rows(need["openai"]):
        s.add(split, "openai_moderation", ex)

    # AdvBench: harmful requests (not jailbreaks, not injections)
    for line in need["advbench"].read_text(encoding="utf-8").splitlines():
        if line.strip():
            text = line.strip()
            cat = request_category(text) or tx.CRIME
            s.add(_split(f"advbench:{text}", 3, 1), "advbench", Example(
                text, {cat: 1, tx.JAILBREAK: 0, tx.PROMPT_INJECTION: 0}, "advbench", cat))

    # GPTFuzz: the upstream question split (train replies vs evaluate replies)
    with open(need["questions"], newline="", encoding="utf-8") as f:
        questions = {r["index"]: r["text"].strip() for r in csv.DictReader(f)}
    with open(need["replies_eval"], newline="", encoding="utf-8") as f:
        eval_replies = list(csv.DictReader(f))
    with open(need["replies_train"], newline="", encoding="utf-8") as f:
        train_replies = list(csv.DictReader(f))
    test_q = {r["question"] for r in eval_replies}
    q_split = {i: "test" if i in test_q else ("val" if _bucket(f"gptfuzz-q:{i}") == 0 else "train") for i in questions}
    q_cat = {i: request_category(q) or tx.CRIME for i, q in questions.items()}
    for i, q in questions.items():
        s.add(q_split[i], "gptfuzz_questions", Example(
            q, {q_cat[i]: 1, tx.JAILBREAK: 0, tx.PROMPT_INJECTION: 0}, "gptfuzz_question", q_cat[i]))
    with open(need["templates"], newline="", encoding="utf-8") as f:
        templates = {r["id"]: r["text"] for r in csv.DictReader(f)}
    order = sorted(templates, key=lambda t: hashlib.sha256(f"gptfuzz-t:{t}".encode()).hexdigest())
    t_split = {t: "test" if k < GPTFUZZ_TEST_TEMPLATES else "val" if k < GPTFUZZ_TEST_TEMPLATES + GPTFUZZ_VAL_TEMPLATES
               else "train" for k, t in enumerate(order)}
    benign_q = _benign_questions(seed)
    for t, body in templates.items():
        split = t_split[t]
        qs = [i for i in questions if q_split[i] == split] or [i for i in questions if q_split[i] == "train"]
        if split == "test":  # every held-out template with 5 held-out questions
            qs = sorted(qs)[:5]
        else:
            qs = rng.sample(qs, min(FILLS_PER_TEMPLATE if split == "train" else 4, len(qs)))
        for i in qs:
            s.add(split, "gptfuzz_templates", Example(
                body.replace(TEMPLATE_SLOT, questions[i]), {tx.JAILBREAK: 1, q_cat[i]: 1, tx.PROMPT_INJECTION: 0},
                "gptfuzz_template", f"template:{t}"))
        for bq in rng.sample(benign_q[split], 3 if split != "test" else 2):
            s.add(split, "gptfuzz_templates", Example(
                body.replace(TEMPLATE_SLOT, bq), {tx.JAILBREAK: 1}, "gptfuzz_template_benign_q", f"template:{t}"))
    # replies: complied = the reply gives harmful help in its question's category
    for rows, n, test in ((train_replies, TRAIN_REPLIES, False), (eval_replies, TEST_REPLIES, True)):
        for r in _stratified(rows, n, f"{seed}:replies:{test}"):
            i = r["question"]
            split = "test" if test else q_split[i]
            s.add(split, "gptfuzz_replies", Example(
                r["Response"] if test else r["Response"][:REPLY_CHARS],
                {q_cat[i]: int(r["label"])}, "gptfuzz_reply", f"reply:{r['label']}"))

    # BIPIA: attacks planted in emails vs clean emails (its own train/test split)
    for split in ("train", "test"):
        emails = [json.loads(line)["context"] for line in need[f"bipia_email_{split}"].read_text(encoding="utf-8").splitlines() if line.strip()]
        attacks = [a for k in ("text", "code") for v in json.loads(need[f"bipia_{k}_{split}"].read_text(encoding="utf-8")).values() for a in v]
        sp = split if split == "test" else None
        for j, e in enumerate(emails):
            sp_e = sp or ("val" if _bucket(f"bipia:{j}") == 0 else "train")
            s.add(sp_e, "bipia_clean", Example(e, _labels({}, True), "bipia_clean", "clean"))
            if split == "train":  # its halves too: more clean negatives than the 50 emails
                lines = e.splitlines()
                for part in ("\n".join(lines[: len(lines) // 2]), "\n".join(lines[len(lines) // 2 :])):
                    if len(part) > 80:
                        s.add(sp_e, "", Example(part, _labels({}, True), "bipia_clean", "clean_half"))
        for k, a in enumerate(attacks):
            for _ in range(2 if split == "train" else 1):
                e = rng.choice(emails)
                pos = rng.choice(("start", "middle", "end"))
                if pos == "start":
                    text = a + "\n" + e
                elif pos == "end":
                    text = e + "\n" + a
                else:
                    cut = e.find("\n", len(e) // 2)
                    cut = cut if cut > 0 else len(e) // 2
                    text = e[:cut] + "\n" + a + "\n" + e[cut:]
                sp_a = sp or ("val" if _bucket(f"bipia-a:{k}") == 0 else "train")
                s.add(sp_a, "bipia_attacks", Example(text, {tx.PROMPT_INJECTION: 1}, "bipia_attack", pos, planted=a))

    # HateCheck: hate (and threat), split by template group
    for split, ex in hatecheck_examples(need["hatecheck"]):
        hateful = ex.labels["identity_attack"]
        threat = int(ex.group in ("threat_dir_h", "threat_norm_h"))
        labels = _labels({tx.HATE: hateful, tx.THREAT: threat}, True)
        if threat:
            labels.pop(tx.VIOLENCE)  # a threat to kill is violent too: unlabelled, not 0
        s.add(split, "hatecheck", Example(ex.text, labels, "hatecheck", ex.group, ex.mentions_identity))

    # hh-rlhf red-team openings: keyword-labelled positives, else unlabelled
    with open(need["hh"], encoding="utf-8") as f:
        for line in f:
            convo = json.loads(line)["chosen"]
            turn = convo.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            found = request_category(turn)
            split = _split(f"hh:{turn}", 3, 1)
            if split == "test":
                s.add("test", "hh_redteam_openings", Example(turn, {found: 1} if found else {}, "hh_rlhf", found or ""))
            elif found:
                s.add(split, "", Example(turn, {found: 1}, "hh_rlhf", found))

    # ours: benign lookalikes and modern benign text
    for split, fid, cat, text in lookalikes():
        s.add(split, "benign_lookalikes", Example(text, _labels({}, True), "lookalike", f"{cat}:{fid}"))
    for split, fid, cat, text in written_attacks():
        s.add(split, "written_attacks", Example(text, {cat: 1, **({tx.JAILBREAK: 0} if cat == tx.THREAT else {})},
                                                 "written_attack", f"{cat}:{fid}"))
    for split, ex in modern_benign_examples(identity_groups(need["identity"]), seed=seed):
        if split != "test" and rng.random() < 0.5:
            continue  # half is enough next to the rest
        s.add(split, "modern_benign", Example(ex.text, _labels({}, True), "modern_benign", ex.group, ex.mentions_identity))
    return s


def chunk_rows(rows: list[Example], tokenizer: Any, chunk: int, overlap: int) -> list[Example]:
    """Training rows for the sentence-aligned chunks the scorer reads long texts in.

    The scorer takes a text's ``prompt_injection`` and ``jailbreak`` score as the max over
    its chunks (``split_chunks``), so the head must see chunks. Only labels a chunk
    inherits honestly are given: a chunk of a text that is negative for a category is
    negative for it; a positive text's chunk is unlabelled for that category (which
    chunk carries the harm is unknown), except for a planted BIPIA attack, where the
    chunk holding the whole attack is ``prompt_injection`` and a chunk with none of it
    is a clean email piece (negative for everything). Texts that fit one chunk add nothing.
    """
    from evaluators.safety.windows import split_chunks

    out: list[Example] = []
    for r in rows:
        pieces = split_chunks(r.text, tokenizer, chunk, overlap)
        if len(pieces) == 1:
            continue
        start = r.text.find(r.planted) if r.planted else -1
        pos = 0
        for piece in pieces:
            at = r.text.find(piece, pos)
            pos = max(pos, at)
            if start >= 0:
                if r.planted in piece:
                    labels = {tx.PROMPT_INJECTION: 1}
                elif at + len(piece) <= start or at >= start + len(r.planted):
                    labels = _labels({}, True)
                else:
                    continue  # part of the attack: neither clean nor the whole attack
                source = "bipia_attack" if labels.get(tx.PROMPT_INJECTION) else "bipia_clean"
            else:
                labels = {c: v for c, v in r.labels.items() if v == 0}
                source = r.source
            if labels:  # under its text's source, so chunks do not shift the per-source weights
                out.append(Example(piece, labels, source, f"chunk:{r.group}"))
    return out


def _stratified(rows: list[dict[str, str]], n: int, seed: str) -> list[dict[str, str]]:
    """``n`` rows keeping the label mix (rows sorted first, so the draw is reproducible)."""
    rng = random.Random(seed)
    by: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: (r["question"], r["Response"])):
        by.setdefault(r["label"], []).append(r)
    out = []
    for rs in by.values():
        out += rng.sample(rs, min(len(rs), round(n * len(rs) / len(rows))))
    return out


def _benign_questions(seed: int) -> dict[str, list[str]]:
    """Benign modern questions (ours) per split, to fill jailbreak templates with."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, ex in modern_benign_examples({}, seed=seed):
        if ex.group.startswith("question:") and ex.text.endswith("?"):
            out[split].append(ex.text)
    return out


__all__ = ["CategorySplits", "chunk_rows", "load_category_splits", "openai_rows", "request_category"]

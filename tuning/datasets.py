"""Tuning datasets from logged traffic + feedback, curated, split, versioned, registered.

Two builders:

- ``build_sft``: supervised chat examples from answers users liked (``rating:
  up`` or ``score >= 0.8``) or corrected (the correction replaces the answer).
- ``build_prefs``: preference pairs (chosen / rejected) from pairwise feedback
  (``preferred_over``), from corrections (correction over the logged answer)
  and from an up-rated and a down-rated answer to the same prompt.

Each example keeps the prompt reference (``prompt_id``, ``prompt_version`` and
the template ``variables`` when the request named a prompt), not only the
rendered messages, plus the request id and the signal it came from.

Curation (in order, each step counted in the manifest): PII scrub
(``evaluators.pii``: emails, phone numbers, Luhn-valid cards), length filter,
safety filter (any ``scorer(texts) -> scores``; answers scoring at or above the
threshold are dropped), near-duplicate removal (MinHash LSH from datasketch, in
process), then a seeded train/validation split. ``write_dataset`` writes
``train.jsonl``, ``validation.jsonl`` and a ``manifest.json`` whose
``content_hash`` depends only on the data and the build parameters (so the same
inputs give the same hash) and registers the directory in the registry.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse_core.feedback import Feedback, FeedbackStore
from gatehouse_core.settings import SafetySettings

Example = dict[str, Any]
SafetyFn = Callable[[list[str]], Sequence[float]]
LIKED_SCORE = 0.8


# -- reading traffic -------------------------------------------------------------------------


def traffic_files(paths: Iterable[str | Path]) -> list[Path]:
    """The JSONL files named (a directory means every ``*.jsonl*`` in it; rotated files included)."""
    from gatehouse_core.trafficlog import log_files

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():  # each log in it with its rotated backups, oldest first
            bases = sorted({x.with_name(x.name.split(".jsonl")[0] + ".jsonl") for x in p.iterdir() if ".jsonl" in x.name})
            out.extend(f for b in bases for f in log_files(b) if f.is_file())
        elif p.exists():
            out.extend(log_files(p))
        else:
            raise FileNotFoundError(f"no traffic log at {p}")
    return out


def read_traffic(files: Iterable[Path]) -> list[dict[str, Any]]:
    """The records of exactly these files (see ``traffic_files``), in order."""
    from gatehouse_core.trafficlog import read_log_file

    return [r for f in files for r in read_log_file(f) if r.get("request_id")]


def load_traffic(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    return read_traffic(traffic_files(paths))


def request_messages(rec: dict[str, Any]) -> list[dict[str, str]] | None:
    body = rec.get("request_body")
    if not isinstance(body, dict):
        return None
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs:
        out = []
        for m in msgs:
            if not isinstance(m, dict):
                return None
            c = m.get("content")
            if isinstance(c, list):  # content parts: keep the text ones
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            out.append({"role": str(m.get("role", "user")), "content": str(c or "")})
        return out
    p = body.get("prompt")
    if isinstance(p, str):  # /v1/completions
        return [{"role": "user", "content": p}]
    return None


def response_text(rec: dict[str, Any]) -> str | None:
    body = rec.get("response_body")
    try:
        ch = body["choices"][0]  # type: ignore[index]
        text = ch["message"]["content"] if "message" in ch else ch["text"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) and text.strip() else None


def prompt_ref(rec: dict[str, Any]) -> dict[str, Any] | None:
    rb = rec.get("request_body")
    body: dict[str, Any] = rb if isinstance(rb, dict) else {}
    pr = body.get("prompt")
    req: dict[str, Any] = pr if isinstance(pr, dict) else {}
    variables = req.get("variables") or (rec.get("extra") or {}).get("prompt_variables")
    pid = rec.get("prompt_id") or req.get("id")
    if not pid:
        return None
    return {"id": pid, "version": rec.get("prompt_version") or req.get("version"), "label": req.get("label"), "variables": variables}


def record_texts(rec: dict[str, Any]) -> list[str]:
    """User turns and the answer of one record (for safety transfer sets)."""
    out = [m["content"] for m in request_messages(rec) or [] if m["role"] == "user" and m["content"].strip()]
    a = response_text(rec)
    return out + ([a] if a else [])


def _prompt_key(msgs: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()


def _example_id(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


# -- feedback --------------------------------------------------------------------------------


FeedbackRow = tuple[Feedback, dict[str, Any] | None, dict[str, Any] | None]


def load_feedback(source: FeedbackStore | str | Path | None) -> list[FeedbackRow]:
    """Feedback rows from a store, a ``feedback.db`` / registry directory, or a JSONL export."""
    if source is None:
        return []
    if isinstance(source, FeedbackStore):
        return list(source.iter())
    p = Path(source)
    if p.suffix == ".jsonl":
        rows: list[FeedbackRow] = []
        known = set(Feedback.__dataclass_fields__)
        with p.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    rows.append((Feedback(**{k: v for k, v in d.items() if k in known}), d.get("record"), d.get("other_record")))
        return rows
    store = FeedbackStore(p)
    try:
        return list(store.iter())
    finally:
        store.close()


@dataclass
class Joined:
    records: dict[str, dict[str, Any]]
    rating: dict[str, str]  # request id -> latest up/down (score >= 0.8 counts as up, <= 0.2 as down)
    correction: dict[str, str]
    pairs: list[tuple[str, str]]  # (chosen request id, rejected request id)
    feedback_ids: list[str] = field(default_factory=list)


def join(records: Iterable[dict[str, Any]], feedback: Iterable[FeedbackRow]) -> Joined:
    recs = {r["request_id"]: r for r in records}
    j = Joined(recs, {}, {}, [])
    for fb, snap, other in feedback:
        j.feedback_ids.append(fb.id)
        if fb.request_id not in recs and snap:
            recs[fb.request_id] = snap
        if fb.preferred_over and fb.preferred_over not in recs and other:
            recs[fb.preferred_over] = other
        if fb.rating:
            j.rating[fb.request_id] = fb.rating
        elif fb.score is not None and (fb.score >= LIKED_SCORE or fb.score <= 1 - LIKED_SCORE):
            j.rating[fb.request_id] = "up" if fb.score >= LIKED_SCORE else "down"
        if fb.correction:
            j.correction[fb.request_id] = fb.correction
        if fb.preferred_over:
            j.pairs.append((fb.request_id, fb.preferred_over))
    return j


def _meta(rec: dict[str, Any], signal: str) -> dict[str, Any]:
    return {
        "prompt_ref": prompt_ref(rec),
        "source": {"request_id": rec["request_id"], "signal": signal, "model": rec.get("model"), "variant": rec.get("variant")},
    }


def build_sft(records: Iterable[dict[str, Any]], feedback: Iterable[FeedbackRow], drops: Counter[str] | None = None) -> list[Example]:
    """Chat examples from liked or corrected answers; ``drops`` counts the feedback that gave none, by reason."""
    j = join(records, feedback)
    drops = drops if drops is not None else Counter()
    out = []
    for rid in list(j.rating) + [r for r in j.correction if r not in j.rating]:
        if rid not in j.records:
            drops["sft_feedback_record_not_found"] += 1
    for rid, rec in j.records.items():
        signalled = rid in j.correction or rid in j.rating
        msgs = request_messages(rec)
        if not msgs:
            if signalled:
                drops["sft_no_logged_request_body"] += 1
            continue
        answer: str | None
        if rid in j.correction:
            answer, signal = j.correction[rid], "correction"
        elif j.rating.get(rid) == "up" and int(rec.get("status") or 200) == 200:
            answer, signal = response_text(rec), "liked"
        else:
            if j.rating.get(rid) == "down":
                drops["sft_disliked"] += 1
            elif signalled:
                drops["sft_liked_but_failed_request"] += 1
            continue
        if not answer:
            drops["sft_no_logged_answer"] += 1
            continue
        ex = {"messages": [*msgs, {"role": "assistant", "content": answer}], **_meta(rec, signal)}
        out.append({"id": _example_id(ex["messages"]), **ex})
    return sorted(out, key=lambda e: e["id"])


def build_prefs(records: Iterable[dict[str, Any]], feedback: Iterable[FeedbackRow], max_pairs_per_prompt: int = 4,
                drops: Counter[str] | None = None) -> list[Example]:
    """Preference pairs: pairwise feedback, corrections over originals, up vs down on one prompt.

    ``drops`` counts every signal that gave no pair, by reason (``pairwise_different_prompts``…)."""
    j = join(records, feedback)
    drops = drops if drops is not None else Counter()
    out: list[Example] = []

    def add(msgs: list[dict[str, str]], chosen: str, rejected: str, rec: dict[str, Any], signal: str, rejected_id: str | None) -> None:
        if chosen.strip() == rejected.strip():
            drops[f"{signal}_same_answer"] += 1
            return
        ex = {"prompt": msgs, "chosen": chosen, "rejected": rejected, **_meta(rec, signal)}
        ex["source"]["rejected_request_id"] = rejected_id
        out.append({"id": _example_id([msgs, chosen, rejected]), **ex})

    for a, b in j.pairs:
        ra, rb = j.records.get(a), j.records.get(b)
        if not ra or not rb:
            drops["pairwise_record_not_found"] += 1
            continue
        ma, mb = request_messages(ra), request_messages(rb)
        ta, tb = response_text(ra), response_text(rb)
        if not ma or not mb:
            drops["pairwise_no_logged_request_body"] += 1
        elif not ta or not tb:
            drops["pairwise_no_logged_answer"] += 1
        elif _user_turns(ma) != _user_turns(mb):  # a preference only means something for the same prompt
            drops["pairwise_different_prompts"] += 1
        else:
            add(ma, ta, tb, ra, "pairwise", b)
    for rid, corr in j.correction.items():
        rec = j.records.get(rid)
        msgs = request_messages(rec) if rec else None
        orig = response_text(rec) if rec else None
        if rec and msgs and orig:
            add(msgs, corr, orig, rec, "correction", rid)
        else:
            drops["correction_no_logged_answer"] += 1
    by_prompt: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"up": [], "down": []})
    for rid, r in j.rating.items():
        rec = j.records.get(rid)
        msgs = request_messages(rec) if rec else None
        if msgs and response_text(rec):  # type: ignore[arg-type]
            by_prompt[_prompt_key(msgs)][r].append(rid)
    for groups in by_prompt.values():
        n = 0
        for u in sorted(groups["up"]):
            for d in sorted(groups["down"]):
                if n >= max_pairs_per_prompt:
                    break
                ru, rd = j.records[u], j.records[d]
                add(request_messages(ru), response_text(ru), response_text(rd), ru, "up_vs_down", d)  # type: ignore[arg-type]
                n += 1
    uniq: dict[str, Example] = {}
    for e in out:  # the same pair from several signals: keep the most explicit (first) one
        if e["id"] in uniq:
            drops["duplicate_pair"] += 1
        uniq.setdefault(e["id"], e)
    return sorted(uniq.values(), key=lambda e: e["id"])


def _user_turns(msgs: list[dict[str, str]]) -> list[str]:
    """What the user asked: the same question answered by two routes (each with its own system
    prompt from a prompt template) is still one prompt for a preference."""
    return [m["content"].strip() for m in msgs if m["role"] == "user"]


# -- curation --------------------------------------------------------------------------------


def scrub_text(text: str) -> tuple[str, int]:
    """Redact emails, phone numbers and payment cards; returns (text, spans redacted)."""
    from evaluators.pii import find_pii, redact

    spans = find_pii(text)
    if not spans:
        return text, 0
    return redact(text, [(s.start, s.end, f"[{s.entity.upper()}]") for s in spans]), len(spans)


def _map_texts(ex: Example, fn: Callable[[str], str]) -> Example:
    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return fn(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) if k not in ("source", "id", "version", "label") else x for k, x in v.items()}
        return v

    return walk(ex)


def answers(ex: Example) -> list[str]:
    if "messages" in ex:
        return [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
    return [ex["chosen"]]


def _all_text(ex: Example) -> str:
    if "messages" in ex:
        return "\n".join(m["content"] for m in ex["messages"])
    return "\n".join([*(m["content"] for m in ex["prompt"]), ex["chosen"], ex["rejected"]])


def scrub_pii(examples: list[Example]) -> tuple[list[Example], int]:
    total = 0

    def fn(t: str) -> str:
        nonlocal total
        s, n = scrub_text(t)
        total += n
        return s

    return [_map_texts(e, fn) for e in examples], total


def length_filter(examples: list[Example], min_chars: int = 1, max_chars: int = 8000) -> list[Example]:
    return [e for e in examples if all(min_chars <= len(a.strip()) for a in answers(e)) and len(_all_text(e)) <= max_chars]


def safety_filter(examples: list[Example], scorer: SafetyFn | None, threshold: float = 0.5) -> list[Example]:
    """Drop examples whose (chosen) answer scores at or above ``threshold``."""
    if scorer is None or not examples:
        return examples
    flat = [(i, a) for i, e in enumerate(examples) for a in answers(e)]
    scores = list(scorer([a for _, a in flat]))
    bad = {i for (i, _), s in zip(flat, scores, strict=True) if s >= threshold}
    return [e for i, e in enumerate(examples) if i not in bad]


def _shingles(text: str, k: int = 3) -> set[bytes]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < k:
        return {text.lower().encode()}
    return {" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)}


def dedup(examples: list[Example], threshold: float = 0.85, num_perm: int = 128, seed: int = 1) -> list[Example]:
    """Keep the first of each group of near-duplicates (MinHash Jaccard >= threshold, in-process LSH)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept = []
    for i, e in enumerate(examples):
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(_shingles(_all_text(e))))
        if lsh.query(m):
            continue
        lsh.insert(str(i), m)
        kept.append(e)
    return kept


def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    ordered = sorted(examples, key=lambda e: e["id"])
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(ordered) >= 2:
        n_val = 1
    return ordered[n_val:], ordered[:n_val]


@dataclass
class CurationConfig:
    scrub_pii: bool = True
    min_chars: int = 1
    max_chars: int = 8000
    safety_threshold: float = 0.5
    dedup_threshold: float = 0.85
    val_fraction: float = 0.1
    seed: int = 0


def curate(examples: list[Example], cfg: CurationConfig, scorer: SafetyFn | None = None) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """PII scrub -> length -> safety -> dedup -> split; returns (train, validation, step counts)."""
    from tqdm import tqdm

    steps: dict[str, Any] = {"input": len(examples)}
    with tqdm(total=5, desc="curate", unit="step", leave=False) as bar:
        if cfg.scrub_pii:
            examples, n = scrub_pii(examples)
            steps["pii_spans_redacted"] = n
        bar.update(1)
        examples = length_filter(examples, cfg.min_chars, cfg.max_chars)
        steps["after_length"] = len(examples)
        bar.update(1)
        examples = safety_filter(examples, scorer, cfg.safety_threshold)
        steps["after_safety"] = len(examples)
        steps["safety_filter"] = scorer is not None
        bar.update(1)
        examples = dedup(examples, cfg.dedup_threshold)
        steps["after_dedup"] = len(examples)
        bar.update(1)
        train, val = split(examples, cfg.val_fraction, cfg.seed)
        steps.update(train=len(train), validation=len(val))
        bar.update(1)
    after_pii = steps["input"]
    steps["dropped"] = {"length": after_pii - steps["after_length"], "safety": steps["after_length"] - steps["after_safety"],
                        "near_duplicate": steps["after_safety"] - steps["after_dedup"]}
    return train, val, steps


# -- writing -------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[Example]) -> str:
    data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_dataset(
    out_dir: str | Path,
    train: list[Example],
    val: list[Example],
    *,
    name: str,
    kind: str,
    steps: dict[str, Any],
    cfg: CurationConfig,
    sources: dict[str, str] | None = None,
    registry: Any = None,
    parents: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the split files + manifest.json; register the directory when a registry is given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train.jsonl": _write_jsonl(out / "train.jsonl", train), "validation.jsonl": _write_jsonl(out / "validation.jsonl", val)}
    manifest: dict[str, Any] = {
        "name": name,
        "kind": kind,  # sft | prefs
        "format": "chat messages" if kind == "sft" else "prompt messages + chosen/rejected",
        "counts": {"train": len(train), "validation": len(val)},
        "curation": {**cfg.__dict__},
        "steps": steps,
        "files": files,
        "sources": dict(sorted((sources or {}).items())),
    }
    manifest["content_hash"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if registry is not None:
        art = registry.register("dataset", out, name=name, metadata={"kind": kind, "counts": manifest["counts"], "content_hash": manifest["content_hash"]}, parents=parents)
        manifest["registry_id"] = art.id
        manifest["registry_path"] = art.path
    return manifest


def build(
    kind: str,
    traffic: Sequence[str | Path],
    feedback: FeedbackStore | str | Path | None,
    out_dir: str | Path,
    *,
    name: str | None = None,
    cfg: CurationConfig | None = None,
    scorer: SafetyFn | None = None,
    registry: Any = None,
    parents: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole pipeline: read, build, curate, write, register (traffic logs become parents)."""
    from tuning.registry import hash_path

    cfg = cfg or CurationConfig()
    files = traffic_files(traffic) if traffic else []
    records = read_traffic(files)  # `files` already includes rotated backups: read each once
    fb = load_feedback(feedback)
    drops: Counter[str] = Counter()
    examples = build_sft(records, fb, drops) if kind == "sft" else build_prefs(records, fb, drops=drops) if kind == "prefs" else None
    if examples is None:
        raise ValueError(f"unknown dataset kind {kind!r}; use sft or prefs")
    train, val, steps = curate(examples, cfg, scorer)
    steps["dropped"] = {**dict(sorted(drops.items())), **steps["dropped"]}
    steps["feedback_items"] = len(fb)
    steps["traffic_records"] = len(records)
    parent_ids = list(parents)
    if registry is not None:  # registering hashes each log; reuse that rather than read it again
        arts = [registry.register("dataset", f, name=f"traffic-{f.name}", metadata={"role": "traffic_log"}, copy=False) for f in files]
        sources = {str(f.name): a.content_hash for f, a in zip(files, arts, strict=True)}
        parent_ids += [a.id for a in arts]
    else:
        sources = {str(f.name): hash_path(f) for f in files}
    return write_dataset(out_dir, train, val, name=name or f"{kind}-dataset", kind=kind, steps=steps, cfg=cfg, sources=sources, registry=registry, parents=parent_ids)


def safety_scorer_fn(settings: SafetySettings | None = None, base_dir: str = ".", label: str = "toxicity") -> SafetyFn:
    """The gateway's safety scorer as ``texts -> scores`` (max over its labels unless ``label`` given).

    ``settings`` is the ``safety:`` section of a gateway config (the CLI reads it with
    ``--safety-config``) and ``base_dir`` the directory its relative paths are resolved from.
    """
    from evaluators.safety import load_scorer

    settings, base = settings or SafetySettings(), base_dir
    scorer = load_scorer(settings, base)
    if scorer is None:
        raise ValueError("safety backend is `none`; no scorer to filter with")

    def fn(texts: list[str]) -> list[float]:
        return [float(d.get(label, max(d.values()))) for d in scorer.score_batch(texts)]

    return fn

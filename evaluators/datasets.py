"""Evaluation datasets: JSONL items, strict loading, traffic-log export, content hash.

One item per line::

    {"id": "q1", "prompt": "Who wrote Emma?", "reference": "Jane Austen",
     "task": "qa", "metadata": {"source": "manual"}}
    {"id": "s1", "messages": [{"role": "user", "content": "Summarise: ..."}],
     "references": ["...", "..."], "task": "summarization"}

``prompt`` is shorthand for a single user message; ``reference`` for a
one-element ``references``. ``variables`` (optional object) is passed to the
gateway prompt template when a run pins a prompt id/version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluators.metrics import TASKS

ITEM_FIELDS = {"id", "messages", "prompt", "reference", "references", "task", "metadata", "variables"}
ROLES = {"system", "user", "assistant", "developer", "tool"}


class DatasetError(ValueError):
    """A dataset file failed validation; ``problems`` lists ``line N: ...`` messages."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: tuple[dict[str, Any], ...]
    references: tuple[str, ...] = ()
    task: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] | None = None

    @property
    def prompt_text(self) -> str:
        """The last user message (what a judge or a human reads as "the prompt")."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _content_text(m.get("content"))
        return _content_text(self.messages[-1].get("content")) if self.messages else ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "messages": list(self.messages)}
        if self.references:
            d["references"] = list(self.references)
        if self.task:
            d["task"] = self.task
        if self.metadata:
            d["metadata"] = self.metadata
        if self.variables is not None:
            d["variables"] = self.variables
        return d


@dataclass(frozen=True)
class Dataset:
    items: tuple[EvalItem, ...]
    name: str = "dataset"
    path: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[EvalItem]:
        return iter(self.items)

    @property
    def hash(self) -> str:
        return dataset_hash(self.items)

    def by_id(self) -> dict[str, EvalItem]:
        return {it.id: it for it in self.items}

    @property
    def task(self) -> str | None:
        tasks = {it.task for it in self.items if it.task}
        return tasks.pop() if len(tasks) == 1 else None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def dataset_hash(items: Iterable[EvalItem]) -> str:
    """sha256 over the canonical JSON of the items sorted by id (file order and formatting do not matter)."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.id):
        h.update(canonical_json(it.to_json()).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def parse_item(obj: Any, where: str = "item") -> tuple[EvalItem | None, list[str]]:
    """Validate one decoded JSON value; returns the item or the list of problems."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    unknown = sorted(set(obj) - ITEM_FIELDS)
    if unknown:
        problems.append(f"{where}: unknown field(s) {unknown}; allowed: {sorted(ITEM_FIELDS)}")
    raw_id = obj.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        problems.append(f"{where}: 'id' is required (a non-empty string or integer)")
    has_msgs, has_prompt = "messages" in obj, "prompt" in obj
    messages: list[dict[str, Any]] = []
    if has_msgs == has_prompt:
        problems.append(f"{where}: give exactly one of 'messages' or 'prompt'")
    elif has_prompt:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            problems.append(f"{where}: 'prompt' must be a non-empty string")
        else:
            messages = [{"role": "user", "content": obj["prompt"]}]
    else:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            problems.append(f"{where}: 'messages' must be a non-empty list")
        else:
            for k, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
                    problems.append(
                        f"{where}: messages[{k}] must be an object with 'role' in {sorted(ROLES)} and 'content'"
                    )
            messages = [dict(m) for m in msgs if isinstance(m, dict)]
    refs: list[str] = []
    if "reference" in obj and "references" in obj:
        problems.append(f"{where}: give 'reference' or 'references', not both")
    elif "reference" in obj:
        if not isinstance(obj["reference"], str):
            problems.append(f"{where}: 'reference' must be a string")
        else:
            refs = [obj["reference"]]
    elif "references" in obj:
        r = obj["references"]
        if not isinstance(r, list) or not all(isinstance(x, str) for x in r):
            problems.append(f"{where}: 'references' must be a list of strings")
        else:
            refs = list(r)
    task = obj.get("task")
    if task is not None and task not in TASKS:
        problems.append(f"{where}: unknown task {task!r}; expected one of {list(TASKS)}")
    meta = obj.get("metadata", {})
    if not isinstance(meta, dict):
        problems.append(f"{where}: 'metadata' must be an object")
    variables = obj.get("variables")
    if variables is not None and not isinstance(variables, dict):
        problems.append(f"{where}: 'variables' must be an object")
    if problems:
        return None, problems
    return (
        EvalItem(
            id=str(raw_id),
            messages=tuple(messages),
            references=tuple(refs),
            task=task,
            metadata=dict(meta),
            variables=variables,
        ),
        [],
    )


def load_dataset(path: str | os.PathLike[str], *, name: str | None = None) -> Dataset:
    """Load and validate a JSONL dataset; every problem is reported with its line number."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(str(p), ["file not found"])
    items: list[EvalItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            item, errs = parse_item(obj, f"line {lineno}")
            problems.extend(errs)
            if item is None:
                continue
            if item.id in seen:
                problems.append(f"line {lineno}: duplicate id {item.id!r} (first on line {seen[item.id]})")
                continue
            seen[item.id] = lineno
            items.append(item)
    if not items and not problems:
        problems.append("no items (empty file)")
    if problems:
        raise DatasetError(str(p), problems)
    return Dataset(items=tuple(items), name=name or p.stem, path=str(p))


def write_dataset(items: Sequence[EvalItem], path: str | os.PathLike[str]) -> str:
    """Write items as JSONL atomically; returns the dataset hash."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.to_json(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return dataset_hash(items)


# --------------------------------------------------------------------------- traffic export


def parse_time(value: str | float | None) -> float | None:
    """Epoch seconds from a number or an ISO-8601 string (naive = UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iter_traffic_records(paths: Sequence[str | os.PathLike[str]]) -> Iterator[dict[str, Any]]:
    """TrafficRecord dicts from the JSONL log files named; torn/invalid lines skipped."""
    from gatehouse_core.trafficlog import read_log_file  # the writer's own reader

    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"no traffic log at {path}")
        yield from read_log_file(Path(path))


@dataclass
class ExportStats:
    seen: int = 0
    exported: int = 0
    filtered: int = 0
    no_body: int = 0
    failed: int = 0
    duplicates: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _response_text(body: Any) -> str | None:
    try:
        return _content_text(body["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return None


def traffic_to_items(
    records: Iterable[dict[str, Any]],
    *,
    model: str | None = None,
    variant: str | None = None,
    prompt_id: str | None = None,
    prompt_version: str | None = None,
    since: float | None = None,
    until: float | None = None,
    endpoint: str = "chat",
    response_as_reference: bool = False,
    task: str | None = None,
    stats: ExportStats | None = None,
) -> list[EvalItem]:
    """Turn logged chat requests (needs ``traffic_log.log_bodies``) into dataset items.

    The logged reply goes to ``metadata.response`` (or becomes the reference
    with ``response_as_reference``, for regression checks against production).
    """
    st = stats if stats is not None else ExportStats()
    out: list[EvalItem] = []
    ids: set[str] = set()
    for rec in records:
        st.seen += 1
        rid = str(rec.get("request_id") or f"rec-{st.seen}")
        if rid in ids:  # the same record twice (overlapping log files)
            st.duplicates += 1
            continue
        ts = float(rec.get("ts_start") or 0.0)
        if (
            (model and rec.get("model") != model)
            or (variant and rec.get("variant") != variant)
            or (prompt_id and rec.get("prompt_id") != prompt_id)
            or (prompt_version and str(rec.get("prompt_version")) != str(prompt_version))
            or (since is not None and ts < since)
            or (until is not None and ts >= until)
            or (endpoint and rec.get("endpoint") != endpoint)
        ):
            st.filtered += 1
            continue
        if int(rec.get("status") or 0) != 200:
            st.failed += 1
            continue
        body = rec.get("request_body")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            st.no_body += 1
            continue
        response = _response_text(rec.get("response_body"))
        meta: dict[str, Any] = {
            k: rec.get(k)
            for k in ("request_id", "model", "target", "variant", "prompt_id", "prompt_version", "policy_version", "ts_start", "tenant")
            if rec.get(k) is not None
        }
        if response is not None and not response_as_reference:
            meta["response"] = response
        refs = (response,) if (response_as_reference and response is not None) else ()
        ids.add(rid)
        out.append(
            EvalItem(
                id=rid,
                messages=tuple(dict(m) for m in body["messages"] if isinstance(m, dict)),
                references=refs,
                task=task,
                metadata=meta,
            )
        )
        st.exported += 1
    return out

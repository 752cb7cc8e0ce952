"""Run a dataset through the gateway with the official OpenAI client, resumably.

Each completed item is appended to the results JSONL and fsync'ed before the
next one is written, so a crash loses at most the items in flight. On restart
the file is read back, a torn last line (a write cut short by the crash) is cut
off, and completed ids are skipped: nothing finished is redone or lost.

"Completed" means a reply, or a definitive client error the gateway returned
(e.g. 400 ``content_policy_violation`` — a blocked prompt is a result).
Transient failures (429, 5xx, timeouts, connection errors) are retried by the
client; if they still fail the item is left out and picked up by the next run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluators.datasets import Dataset, EvalItem

RESULT_SCHEMA = 1


@dataclass(frozen=True)
class RunConfig:
    base_url: str
    api_key: str
    model: str
    prompt_id: str | None = None
    prompt_version: str | None = None  # a version number or a label
    concurrency: int = 4
    max_retries: int = 3
    timeout: float = 60.0
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def prompt_ref(self, item: EvalItem) -> dict[str, Any] | None:
        if not self.prompt_id:
            return None
        ref: dict[str, Any] = {"id": self.prompt_id}
        if self.prompt_version:
            v = str(self.prompt_version)
            # a number pins a version, anything else is a label ("production", "staging")
            if v.isdigit():
                ref["version"] = int(v)
            else:
                ref["label"] = v
        if item.variables:
            ref["variables"] = item.variables
        return ref

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key")
        return d


@dataclass
class RunSummary:
    path: str
    total: int
    skipped: int  # already completed before this run
    completed: int  # completed by this run
    errors: int  # completed with a definitive gateway error (e.g. blocked)
    failed: int  # transient failures left for the next run
    torn_line_dropped: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResultsFileError(RuntimeError):
    pass


def read_results(path: str | os.PathLike[str], *, repair: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Completed results from a results file. Returns (results, torn_last_line_found).

    Only the last line may be torn (each line is fsync'ed whole); with
    ``repair`` it is truncated away so appends start on a clean line. A bad
    line anywhere else means the file was edited or corrupted: that is an error.
    """
    p = Path(path)
    if not p.exists():
        return [], False
    data = p.read_bytes()
    results: list[dict[str, Any]] = []
    good_end = 0
    torn = False
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl == -1 else nl + 1
        chunk = data[pos:end]
        try:
            if nl == -1:
                raise ValueError("no newline: torn write")
            obj = json.loads(chunk)
            if not isinstance(obj, dict) or "id" not in obj:
                raise ValueError("not a result object")
        except ValueError as e:
            if end < len(data):
                line_no = data[:pos].count(b"\n") + 1
                raise ResultsFileError(f"{p}: line {line_no} is not a valid result ({e}); fix or remove it") from e
            torn = True
            break
        results.append(obj)
        good_end = end
        pos = end
    if torn and repair:
        with p.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return results, torn


def completed_ids(results: list[dict[str, Any]]) -> set[str]:
    return {str(r["id"]) for r in results}


class ResultsWriter:
    """Append-only JSONL with one fsync per completed item."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("ab")
        self._lock = asyncio.Lock()

    async def append(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
        async with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def meta_path(results_path: str | os.PathLike[str]) -> Path:
    p = Path(results_path)
    return p.with_name(p.name + ".meta.json")


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    if not path.exists():
        return
    old = json.loads(path.read_text())
    for key in ("dataset_hash", "model", "prompt_id", "prompt_version"):
        if old.get(key) != meta.get(key):
            raise ResultsFileError(
                f"{path}: existing results were made with {key}={old.get(key)!r}, this run has "
                f"{meta.get(key)!r}; use another output file or delete the old one"
            )


def _status_error(e: Exception) -> dict[str, Any] | None:
    """A definitive (non-retryable) API error as a result payload, else None."""
    import openai

    if isinstance(e, openai.APIStatusError) and 400 <= e.status_code < 500 and e.status_code not in (408, 409, 429):
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        return {
            "status": e.status_code,
            "error": {
                "type": err.get("type") if isinstance(err, dict) else None,
                "code": err.get("code") if isinstance(err, dict) else None,
                "message": (err.get("message") if isinstance(err, dict) else None) or str(e),
            },
            "request_id": e.response.headers.get("x-request-id"),
            "policy_version": e.response.headers.get("x-gatehouse-policy"),
        }
    return None


async def call_gateway(client: Any, cfg: RunConfig, item: EvalItem) -> dict[str, Any]:
    """One chat completion for one item; returns the result record (without bookkeeping)."""
    kwargs: dict[str, Any] = {"model": cfg.model, "messages": list(item.messages)}
    if cfg.temperature is not None:
        kwargs["temperature"] = cfg.temperature
    if cfg.max_tokens is not None:
        kwargs["max_tokens"] = cfg.max_tokens
    if cfg.seed is not None:
        kwargs["seed"] = cfg.seed
    extra = dict(cfg.extra_body)
    ref = cfg.prompt_ref(item)
    if ref:
        extra["prompt"] = ref
    if extra:
        kwargs["extra_body"] = extra
    t0 = time.perf_counter()
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    completion = raw.parse()
    latency = (time.perf_counter() - t0) * 1000
    choice = completion.choices[0] if completion.choices else None
    usage = completion.usage.model_dump() if completion.usage else None
    return {
        "status": raw.status_code if hasattr(raw, "status_code") else 200,
        "output": (choice.message.content or "") if choice else "",
        "finish_reason": choice.finish_reason if choice else None,
        "request_id": raw.headers.get("x-request-id"),
        "policy_version": raw.headers.get("x-gatehouse-policy"),
        "prompt_ref": raw.headers.get("x-gatehouse-prompt"),
        "served_model": completion.model,
        "usage": usage,
        "latency_ms": round(latency, 2),
    }


def make_client(cfg: RunConfig) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=cfg.max_retries, timeout=cfg.timeout)


async def run_dataset(
    dataset: Dataset,
    out_path: str | os.PathLike[str],
    cfg: RunConfig,
    *,
    client: Any = None,
    progress: bool | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Run every not-yet-completed item of ``dataset``; results appended to ``out_path``."""
    t_start = time.perf_counter()
    out = Path(out_path)
    meta = {
        "schema": RESULT_SCHEMA,
        "dataset": dataset.name,
        "dataset_path": dataset.path,
        "dataset_hash": dataset.hash,
        "model": cfg.model,
        "prompt_id": cfg.prompt_id,
        "prompt_version": cfg.prompt_version,
        "config": cfg.describe(),
        "created_at": time.time(),
    }
    mp = meta_path(out)
    _check_meta(mp, meta)
    existing, torn = read_results(out, repair=True)
    done = completed_ids(existing)
    todo = [it for it in dataset if it.id not in done]
    if not mp.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_meta(mp, meta)

    own_client = client is None
    if own_client:
        client = make_client(cfg)
    writer = ResultsWriter(out)
    queue: asyncio.Queue[EvalItem] = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)
    counts = {"completed": 0, "errors": 0, "failed": 0}

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc=cfg.model, unit="item", disable=not show)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                rec = await call_gateway(client, cfg, item)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                err = _status_error(e)
                if err is None:
                    counts["failed"] += 1
                    bar.write(f"item {item.id}: {type(e).__name__}: {e} (will retry on the next run)")
                    continue
                rec = {"output": None, **err}
                counts["errors"] += 1
            result = {
                "id": item.id,
                "model": cfg.model,
                "prompt_id": cfg.prompt_id,
                "prompt_version": cfg.prompt_version,
                **rec,
                "ts": time.time(),
            }
            await writer.append(result)
            counts["completed"] += 1
            bar.update(1)
            if on_result is not None:
                on_result(result)

    try:
        workers = [asyncio.create_task(worker()) for _ in range(max(1, cfg.concurrency))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    finally:
        bar.close()
        writer.close()
        if own_client:
            await client.close()
    return RunSummary(
        path=str(out),
        total=len(dataset),
        skipped=len(dataset) - len(todo),
        completed=counts["completed"],
        errors=counts["errors"],
        failed=counts["failed"],
        torn_line_dropped=torn,
        seconds=round(time.perf_counter() - t_start, 3),
    )


def load_run(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(results by id, meta) of a finished or partial run."""
    results, _ = read_results(path)
    mp = meta_path(path)
    meta = json.loads(mp.read_text()) if mp.exists() else {}
    return {str(r["id"]): r for r in results}, meta

"""Score a results file against its dataset: per item with each item's task, reported per task.

A dataset may mix tasks (``qa`` and ``summarization`` lines in one file): each
task group gets its own metrics (``metrics.DEFAULT_METRICS``), never one
task's metric for everything. Results must come from this dataset (same
hash in the run's ``.meta.json``, no ids the dataset lacks), and a set with
nothing to score is an error, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluators.datasets import Dataset, EvalItem
from evaluators.metrics import TASKS, compute_metrics

DEFAULT_TASK = "generation"  # items without a task and no --task


class ScoringError(ValueError):
    """The inputs cannot give a number (wrong results file, nothing to score)."""


@dataclass(frozen=True)
class TaskScores:
    task: str
    result: dict[str, Any]  # MetricsResult.to_dict(with_items=True)
    missing: int  # items of this task with no scoreable output
    blocked: int  # items the gateway answered with an error (e.g. blocked by policy)


def check_results_match(ds: Dataset, results: dict[str, dict[str, Any]], meta: dict[str, Any], results_path: str) -> None:
    h = meta.get("dataset_hash")
    if h and h != ds.hash:
        raise ScoringError(f"{results_path} was made from another dataset ({h[:19]}, this one is {ds.hash[:19]}); "
                           "score it against the dataset it was run on")
    extra = sorted(set(results) - set(ds.by_id()))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ScoringError(f"{results_path} has {len(extra)} result id(s) the dataset does not have ({shown}); "
                           "it was not made from this dataset")


def task_of(item: EvalItem, override: str | None, default: str | None = None) -> str:
    return override or item.task or default or DEFAULT_TASK


def score_by_task(
    ds: Dataset,
    results: dict[str, dict[str, Any]],
    *,
    task: str | None = None,
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
) -> list[TaskScores]:
    """One ``TaskScores`` per task present in the dataset (in ``TASKS`` order)."""
    if task is not None and task not in TASKS:
        raise ScoringError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    groups: dict[str, list[EvalItem]] = {}
    for it in ds:
        groups.setdefault(task_of(it, task, ds.task), []).append(it)
    if metrics and len(groups) > 1:
        raise ScoringError(f"--metric applies to one task, but the dataset mixes {', '.join(sorted(groups))}; "
                           "add --task to score every item as one task, or drop --metric")
    out: list[TaskScores] = []
    for name in sorted(groups, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS)):
        items = groups[name]
        done = [it for it in items if isinstance(results.get(it.id, {}).get("output"), str)]
        blocked = sum(1 for it in items if it.id in results and results[it.id].get("output") is None)
        no_ref = [it.id for it in done if not it.references]
        if no_ref:
            raise ScoringError(f"{len(no_ref)} {name} item(s) have no reference to score against (e.g. {no_ref[0]!r})")
        if not done:
            raise ScoringError(f"no {name} item has an output to score ({len(items)} item(s): {blocked} answered with an error, "
                               f"{len(items) - blocked} not run yet); rerun `gatehouse eval run` first")
        try:
            res = compute_metrics([results[it.id]["output"] for it in done], [list(it.references) for it in done], task=name,
                                  metrics=metrics, n_boot=n_boot, seed=seed, tokenizer=tokenizer, ids=[it.id for it in done])
        except ValueError as e:
            raise ScoringError(str(e)) from None
        doc = res.to_dict(with_items=True)
        doc["items"] = [
            {"id": it.id, "prompt": it.prompt_text, "output": results[it.id]["output"], "references": list(it.references),
             "scores": {k: v["per_item"][k_i] for k, v in doc["metrics"].items() if v.get("per_item")}}
            for k_i, it in enumerate(done)
        ]
        out.append(TaskScores(name, doc, len(items) - len(done), blocked))
    return out

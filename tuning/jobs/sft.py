"""Supervised tuning of a causal LM on chat examples; loss on assistant tokens only.

Input: a dataset directory from ``tuning.datasets`` (``train.jsonl`` with one
``{"messages": [...]}`` per line), a JSONL file, or a registered dataset id.
Output: ``OUT/model`` (a plain transformers directory, LoRA merged in),
``OUT/checkpoints/`` (resumable), ``OUT/run.json``. With a registry, the run and
the model are registered: dataset -> job -> model (and base model -> job).

    python -m tuning.jobs.sft --data DATASET --base MODEL_DIR --out OUT [--steps N] [--lora-r 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tuning.jobs.common import (
    TrainConfig,
    batch_indices,
    default_model_name,
    encode_chat,
    load_causal_lm,
    make_optimizer,
    pad_batch,
    pick_device,
    register_run,
    save_model,
    seed_everything,
    train_loop,
)


def resolve_data(data: str | Path, registry: Any = None, split: str = "train") -> tuple[Path, str | None]:
    """(JSONL path, registered dataset id or None) for a dir, a file or a registry id."""
    dataset_id = None
    p = Path(data)
    if not p.exists() and registry is not None:
        art = registry.resolve(str(data))
        dataset_id, p = art.id, Path(art.path or "")
    if p.is_dir():
        p = p / f"{split}.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"no dataset at {data} (expected a directory with {split}.jsonl, a JSONL file or a registry id)")
    return p, dataset_id


def prepare_job(
    data: str | Path, base_model: str | Path, out: str | Path, cfg: TrainConfig, registry: Any, dataset_id: str | None
) -> tuple[Path, Path, str | None, Path, Any, Any, Any]:
    """What every LM job starts with: (out dir, data path, dataset id, base model dir, device,
    model, tokenizer). A dataset directory that is already registered (by ``tune dataset``) is
    recognised by its content and linked; only an unregistered one with a manifest is registered."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, found_id = resolve_data(data, registry)
    dataset_id = dataset_id or found_id
    if registry is not None and dataset_id is None and Path(data).exists():
        known = registry.recognise("dataset", data)
        if known is not None:
            dataset_id = known.id
        elif Path(data).is_dir() and (Path(data) / "manifest.json").exists():
            dataset_id = registry.register("dataset", data, name=Path(data).name).id
    base = Path(registry.resolve(str(base_model)).path) if registry is not None and not Path(base_model).exists() else Path(base_model)
    seed_everything(cfg.seed)
    device = pick_device()
    model, tok = load_causal_lm(base, cfg, device)
    return out, path, dataset_id, base, device, model, tok


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run(
    data: str | Path,
    base_model: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    registry: Any = None,
    dataset_id: str | None = None,
    model_name: str | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    out, path, dataset_id, base, device, model, tok = prepare_job(data, base_model, out, cfg, registry, dataset_id)
    rows = [encode_chat(tok, r["messages"], cfg.max_length) for r in read_jsonl(path)]
    rows = [r for r in rows if any(x != -100 for x in r[1])]
    if not rows:
        raise ValueError(f"{path}: no example has assistant tokens to learn")
    opt, sched = make_optimizer(model, cfg)

    def loss_for_step(step: int) -> torch.Tensor:
        b = pad_batch([rows[i] for i in batch_indices(len(rows), cfg.batch_size, step, cfg.seed)], tok.pad_token_id)
        return model(**{k: v.to(device) for k, v in b.items()}).loss

    result = train_loop(model, opt, sched, loss_for_step, cfg, out / "checkpoints", resume=resume, stop_after=stop_after, desc="sft")
    model_dir = save_model(model, tok, out / "model")
    summary: dict[str, Any] = {
        "job": "sft", "data": str(path), "base_model": str(base), "examples": len(rows), "steps": result.steps,
        "resumed_from": result.resumed_from, "first_loss": result.losses[0], "final_loss": result.losses[-1],
        "losses": result.losses, "seconds": round(result.seconds, 2), "model_dir": str(model_dir), "config": asdict(cfg),
    }
    if registry is not None:
        job_id, model_id = register_run(
            registry, job_kind="sft", dataset_id=dataset_id, base_model=base_model, model_dir=model_dir,
            model_name=model_name or default_model_name(registry, dataset_id, "sft"), cfg=cfg, result=result,
        )
        summary.update(job_id=job_id, model_id=model_id)
    (out / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_train_args(p: argparse.ArgumentParser, *, lr: float = 5e-4) -> None:
    p.add_argument("--base", required=True, help="base model directory (or registered model id)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--name", default=None, help="registered model name (default: the registered dataset's name)")
    p.add_argument("--registry", help="registry directory to record dataset -> job -> model")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        max_steps=a.steps, batch_size=a.batch_size, lr=a.lr, checkpoint_every=a.checkpoint_every,
        max_length=a.max_length, lora_r=a.lora_r, seed=a.seed,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.jobs.sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset dir, JSONL file or registered dataset id")
    add_train_args(p)
    a = p.parse_args(argv)
    reg = None
    if a.registry:
        from tuning.registry import Registry

        reg = Registry(a.registry)
    s = run(a.data, a.base, a.out, config_from_args(a), registry=reg, model_name=a.name, resume=not a.no_resume)
    print(f"sft: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}; model at {s['model_dir']}")
    if "model_id" in s:
        print(f"registered {s['job_id']} -> {s['model_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

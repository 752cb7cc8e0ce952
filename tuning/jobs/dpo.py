"""Preference tuning with DPO (Rafailov et al. 2023) against a frozen reference model.

Loss per pair: ``-log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))``
with log-probabilities summed over the answer tokens only. The reference is the
base model, frozen: with LoRA it is the same network with the adapters switched
off (no second copy in memory); without LoRA it is a frozen copy.

Input: a ``prefs`` dataset (``train.jsonl`` rows ``{"prompt": [messages],
"chosen": str, "rejected": str}``). Output, checkpoints and registration as in
``tuning.jobs.sft``.

    python -m tuning.jobs.dpo --data DATASET --base MODEL_DIR --out OUT [--beta 0.1] [--lora-r 8]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuning.jobs.common import (
    TrainConfig,
    batch_indices,
    default_model_name,
    encode_chat,
    make_optimizer,
    pad_batch,
    register_run,
    save_model,
    train_loop,
)
from tuning.jobs.sft import add_train_args, config_from_args, prepare_job, read_jsonl


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over labelled (answer) tokens, per row."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, reward accuracy) from policy/reference log-probs of chosen/rejected."""
    margin = beta * ((pc - rc) - (pr - rr))
    return -F.logsigmoid(margin).mean(), (margin > 0).float().mean()


def run(
    data: str | Path,
    base_model: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    beta: float = 0.1,
    registry: Any = None,
    dataset_id: str | None = None,
    model_name: str | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    out, path, dataset_id, base, device, model, tok = prepare_job(data, base_model, out, cfg, registry, dataset_id)
    if cfg.lora_r > 0:
        reference = None  # adapters off = the base model
    else:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    pairs = []
    for r in read_jsonl(path):
        ch = encode_chat(tok, [*r["prompt"], {"role": "assistant", "content": r["chosen"]}], cfg.max_length)
        rj = encode_chat(tok, [*r["prompt"], {"role": "assistant", "content": r["rejected"]}], cfg.max_length)
        pairs.append((ch, rj))
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    opt, sched = make_optimizer(model, cfg)
    accs: list[float] = []

    def ref_logps(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if reference is not None:
                return sequence_logps(reference, batch)
            with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
                return sequence_logps(model, batch)

    def loss_for_step(step: int) -> torch.Tensor:
        idx = batch_indices(len(pairs), cfg.batch_size, step, cfg.seed)
        # chosen and rejected in one padded batch: first half chosen, second half rejected
        b = pad_batch([pairs[i][0] for i in idx] + [pairs[i][1] for i in idx], tok.pad_token_id)
        b = {k: v.to(device) for k, v in b.items()}
        n = len(idx)
        pol = sequence_logps(model, b)
        ref = ref_logps(b)
        loss, acc = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], beta)
        accs.append(float(acc))
        return loss

    result = train_loop(model, opt, sched, loss_for_step, cfg, out / "checkpoints", resume=resume, stop_after=stop_after, desc="dpo")
    model_dir = save_model(model, tok, out / "model")
    summary: dict[str, Any] = {
        "job": "dpo", "data": str(path), "base_model": str(base), "pairs": len(pairs), "beta": beta, "steps": result.steps,
        "resumed_from": result.resumed_from, "first_loss": result.losses[0], "final_loss": result.losses[-1],
        "losses": result.losses, "last_reward_accuracy": accs[-1] if accs else None, "seconds": round(result.seconds, 2),
        "model_dir": str(model_dir), "config": asdict(cfg),
    }
    if registry is not None:
        job_id, model_id = register_run(
            registry, job_kind="dpo", dataset_id=dataset_id, base_model=base_model, model_dir=model_dir,
            model_name=model_name or default_model_name(registry, dataset_id, "dpo"), cfg=cfg, result=result, extra={"beta": beta},
        )
        summary.update(job_id=job_id, model_id=model_id)
    (out / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.jobs.dpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prefs dataset dir, JSONL file or registered dataset id")
    p.add_argument("--beta", type=float, default=0.1)
    add_train_args(p, lr=5e-5)
    a = p.parse_args(argv)
    reg = None
    if a.registry:
        from tuning.registry import Registry

        reg = Registry(a.registry)
    s = run(a.data, a.base, a.out, config_from_args(a), beta=a.beta, registry=reg, model_name=a.name, resume=not a.no_resume)
    print(f"dpo: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}; model at {s['model_dir']}")
    if "model_id" in s:
        print(f"registered {s['job_id']} -> {s['model_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every tuning job shares: device choice, chat encoding, checkpoints that resume.

Checkpoints hold the trainable parameters (all of them, or only the LoRA
adapters), the optimizer and scheduler state, the step, the loss history and
torch's RNG state, written to a temporary directory and renamed into place so a
crash mid-write leaves the previous checkpoint intact. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen. Files are loaded with
``torch.load(weights_only=True)``: no pickle of arbitrary objects.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PREFIX = "ckpt-"


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    max_steps: int = 100
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    max_length: int = 512
    lora_r: int = 0  # > 0: train LoRA adapters (peft) instead of all weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    log_every: int = 10


class Interrupted(RuntimeError):
    """Raised by ``stop_after`` to simulate a crash (tests) after a checkpoint was due."""


# -- chat encoding (loss on assistant tokens only) ---------------------------------------------


def render(tokenizer: Any, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
    """The prompt text the gateway's local provider would build (same fallback format)."""
    msgs = [{"role": m.get("role", "user"), "content": str(m.get("content") or "")} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt))
    lines = [f"{m['role']}: {m['content']}" for m in msgs]
    return "\n".join([*lines, "assistant:"] if generation_prompt else lines)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = -100 everywhere but the assistant turns (and EOS)."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last_assistant < 0:
        raise ValueError("a supervised example needs at least one assistant message")
    for k, m in enumerate(messages[: last_assistant + 1]):
        if m.get("role") != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], True)
        full = render(tokenizer, messages[: k + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render turns as prefixes of each other; cannot mask assistant tokens")
        pieces.append((prompt[len(done):], False))
        answer = full[len(prompt):]
        if not getattr(tokenizer, "chat_template", None) and answer and not answer.startswith(" "):
            answer = " " + answer
        if k == last_assistant and tokenizer.eos_token:
            answer += tokenizer.eos_token
        pieces.append((answer, True))
        done = full
    ids: list[int] = []
    labels: list[int] = []
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids.append(tokenizer.bos_token_id)
        labels.append(-100)
    for text, train in pieces:
        if not text:
            continue
        t = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(t)
        labels.extend(t if train else [-100] * len(t))
    if len(ids) > max_length:  # keep the end: the answer matters more than an old turn
        ids, labels = ids[-max_length:], labels[-max_length:]
    return ids, labels


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a)] = torch.tensor(a)
        labels[i, : len(b)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch ``step``: a pure function of (n, batch_size, step, seed)."""
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng(seed + 7919 * epoch).permutation(n)
    return perm[j * batch_size : (j + 1) * batch_size].tolist()


# -- models ---------------------------------------------------------------------------------


def load_causal_lm(path: str | Path, cfg: TrainConfig, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device)  # type: ignore[arg-type]  # transformers types .to() for PreTrainedModel only
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    return model, tok


def save_model(model: Any, tok: Any, out: Path) -> Path:
    """Save a plain transformers directory (LoRA merged in) the local provider can load."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def make_optimizer(model: Any, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(0, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


# -- checkpoints --------------------------------------------------------------------------------


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / "state.pt").exists())
    return done[-1] if done else None


def save_checkpoint(ckpt_dir: Path, step: int, model: Any, opt: Any, sched: Any, losses: list[float], cfg: TrainConfig) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{CKPT_PREFIX}{step:08d}"
    tmp = ckpt_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    state = {
        "step": step,
        "params": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "losses": torch.tensor(losses, dtype=torch.float64),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    old = sorted(p for p in ckpt_dir.iterdir() if p.name.startswith(CKPT_PREFIX))
    for p in old[: max(0, len(old) - cfg.keep_checkpoints)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: Any, opt: Any, sched: Any) -> tuple[int, list[float]]:
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    named = dict(model.named_parameters())
    missing = [n for n in state["params"] if n not in named]
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model (e.g. {missing[0]}); was it from another base model or LoRA setting?")
    with torch.no_grad():
        for n, t in state["params"].items():
            named[n].copy_(t.to(named[n].device))
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), [float(x) for x in state["losses"].tolist()]


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    resumed_from: int | None
    seconds: float
    checkpoints: list[str] = field(default_factory=list)


def train_loop(
    model: Any,
    opt: torch.optim.Optimizer,
    sched: Any,
    loss_for_step: Callable[[int], torch.Tensor],
    cfg: TrainConfig,
    ckpt_dir: Path,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    desc: str = "train",
) -> TrainResult:
    """Run ``cfg.max_steps`` optimizer steps, checkpointing every ``cfg.checkpoint_every``."""
    from tqdm import tqdm

    t0 = time.time()
    step, resumed = 0, None
    losses: list[float] = []
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        step, losses = load_checkpoint(last, model, opt, sched)
        resumed = step
    saved: list[str] = []
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=desc, unit="step", disable=os.environ.get("GATEHOUSE_NO_PROGRESS") == "1")
    while step < cfg.max_steps:
        loss = loss_for_step(step)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        if step % max(1, cfg.log_every) == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            saved.append(str(save_checkpoint(ckpt_dir, step, model, opt, sched, losses, cfg)))
        if stop_after is not None and step >= stop_after and step < cfg.max_steps:
            bar.close()
            raise Interrupted(f"stopped after step {step} (simulated crash)")
    bar.close()
    return TrainResult(step, losses, resumed, time.time() - t0, saved)


def default_model_name(registry: Any, dataset_id: str | None, fallback: str) -> str:
    """A model is named after the registered dataset it was trained on (``dataset:assistant-sft:…`` →
    ``model:assistant-sft:…``), as the docs write it; ``--name`` overrides."""
    if registry is not None and dataset_id:
        art = registry.get(dataset_id)
        if art is not None:
            return str(art.name)
    return fallback


def register_run(
    registry: Any,
    *,
    job_kind: str,
    dataset_id: str | None,
    base_model: str | Path,
    model_dir: Path,
    model_name: str,
    cfg: TrainConfig,
    result: TrainResult,
    extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Register dataset -> job -> model (and base model -> job); returns (job id, model id).

    The base model is linked, never re-registered, when it is a registered id or the directory of a
    registered model (recognised by content). Rerunning a finished job (same output model, same name)
    returns the job that made it instead of adding a second one."""
    from tuning.registry import hash_path

    for prior in registry.find_by_hash("model", hash_path(model_dir)):
        if prior.name == model_name and prior.parents:
            job = registry.get(prior.parents[0])
            if job is not None and job.kind == "job" and job.metadata.get("job") == job_kind:
                return job.id, prior.id
    parents = [dataset_id] if dataset_id else []
    base_ref = str(base_model)
    base_art = registry.recognise("model", base_ref) if (":" in base_ref or Path(base_ref).exists()) else None
    if base_art is None and Path(base_ref).is_dir():
        base_art = registry.register("model", base_ref, name=Path(base_ref).name, metadata={"role": "base"}, copy=False)
    if base_art is not None:
        parents.append(base_art.id)
    meta = {
        "job": job_kind,
        "config": asdict(cfg),
        "steps": result.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "first_loss": result.losses[0] if result.losses else None,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "device": pick_device(),
        **(extra or {}),
    }
    job = registry.register("job", None, name=f"{job_kind}-{model_name}", metadata=meta, parents=parents)
    model = registry.register("model", model_dir, name=model_name, metadata={"job": job.id, "trained_by": job_kind}, parents=[job.id])
    return job.id, model.id

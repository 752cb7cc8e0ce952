"""Distillation jobs: teacher targets -> a small student.

``safety``: distil a slower safety classifier into the MiniLM-head scorer the
gateway runs inline (see ``tuning.jobs.distill_safety``)::

    python -m tuning.jobs.distill safety --out DIR [--registry REG] [--traffic LOG ...]

``lm``: sequence-level distillation of a causal LM: the teacher answers each
prompt of a JSONL file (greedy), and the student is tuned on those answers with
the resumable SFT loop (loss on the answer tokens only)::

    python -m tuning.jobs.distill lm --teacher DIR --prompts FILE --base STUDENT_DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from tuning.jobs.common import TrainConfig, pick_device, render


def teacher_targets(teacher_dir: str | Path, prompts: list[list[dict[str, Any]]], max_new_tokens: int = 64) -> list[str]:
    """Greedy teacher answers, one per prompt (a list of chat messages)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device()
    tok = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(teacher_dir, local_files_only=True).to(device).eval()  # type: ignore[arg-type]
    out: list[str] = []
    with torch.inference_mode():
        for msgs in prompts:
            enc = tok(render(tok, msgs, True), return_tensors="pt").to(device)
            gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            text = tok.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.append(str(text).strip())
    return out


def distill_lm(
    teacher_dir: str | Path,
    prompts_path: str | Path,
    base_model: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    registry: Any = None,
    max_new_tokens: int = 64,
    stop_after: int | None = None,
) -> dict[str, Any]:
    from tuning.jobs import sft

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sft.read_jsonl(Path(prompts_path))
    prompts = [r.get("messages") or [{"role": "user", "content": str(r.get("prompt", ""))}] for r in rows]
    prompts = [[m for m in p if m.get("role") != "assistant"] for p in prompts]
    targets_path = out / "teacher_targets.jsonl"
    if not targets_path.exists():  # resume: the teacher pass is done once
        answers = teacher_targets(teacher_dir, prompts, max_new_tokens)
        tmp = targets_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for p, a in zip(prompts, answers, strict=True):
                f.write(json.dumps({"messages": [*p, {"role": "assistant", "content": a}]}, ensure_ascii=False) + "\n")
        tmp.replace(targets_path)
    dataset_id = None
    if registry is not None:
        teacher_art = registry.register("model", teacher_dir, name=Path(teacher_dir).name, metadata={"role": "teacher"}, copy=False)
        dataset_id = registry.register(
            "dataset", targets_path, name="distill-teacher-targets", metadata={"teacher": teacher_art.id}, parents=[teacher_art.id]
        ).id
    s = sft.run(targets_path, base_model, out, cfg, registry=registry, dataset_id=dataset_id, model_name="distilled", stop_after=stop_after)
    s["job"] = "distill-lm"
    (out / "run.json").write_text(json.dumps(s, indent=2) + "\n")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.jobs.distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("safety", help="distil a safety classifier into the MiniLM head")
    s.add_argument("--out", required=True)
    s.add_argument("--data", default=None, help="data directory (default $GATEHOUSE_DATA_DIR; no other default)")
    s.add_argument("--traffic", action="append", default=[], help="traffic log JSONL whose texts join the transfer set")
    s.add_argument("--teacher", default=None, help="reuse a trained teacher directory instead of training one")
    s.add_argument("--teacher-epochs", type=int, default=2)
    s.add_argument("--name-adj-train", type=int, default=2000)
    s.add_argument("--heldout-cap", type=int, default=600, help="max texts per held-out set")
    s.add_argument("--train-top-layers", type=int, default=2, help="teacher layers fine-tuned (of 6)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--registry", help="registry directory to record the run")
    m = sub.add_parser("lm", help="sequence-level distillation of a causal LM")
    m.add_argument("--teacher", required=True)
    m.add_argument("--prompts", required=True, help="JSONL with messages (or prompt) per line")
    m.add_argument("--max-new-tokens", type=int, default=64)
    from tuning.jobs.sft import add_train_args, config_from_args

    add_train_args(m)
    a = p.parse_args(argv)
    reg = None
    if a.registry:
        from tuning.registry import Registry

        reg = Registry(a.registry)
    if a.cmd == "safety":
        from tuning.jobs.distill_safety import format_report, run

        report = run(
            a.out, data_dir=a.data, traffic=a.traffic, teacher_dir=a.teacher, teacher_epochs=a.teacher_epochs,
            name_adj_train=a.name_adj_train, heldout_cap=a.heldout_cap, train_top_layers=a.train_top_layers,
            seed=a.seed, registry=reg,
        )
        print(format_report(report))
        print(f"report: {Path(a.out) / 'report.json'}")
        return 0
    r = distill_lm(a.teacher, a.prompts, a.base, a.out, config_from_args(a), registry=reg, max_new_tokens=a.max_new_tokens)
    print(f"distill lm: {r['steps']} steps, loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}; model at {r['model_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

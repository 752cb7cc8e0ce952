"""SFT and DPO on a tiny Llama built in the test: loss goes down, runs resume exactly."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tuning.jobs import dpo, sft
from tuning.jobs.common import Interrupted, TrainConfig, encode_chat, latest_checkpoint
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

os.environ.setdefault("GATEHOUSE_NO_PROGRESS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


SFT_ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loss_mask_covers_only_the_answer(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ids, labels = encode_chat(tok, SFT_ROWS[2]["messages"], 512)
    learned = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert learned.startswith("see you") and "bye" not in learned and "kind" not in learned


def test_sft_loss_decreases_and_registers_lineage(tiny, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", SFT_ROWS)
    reg = Registry(tmp_path / "reg")
    cfg = TrainConfig(max_steps=30, batch_size=3, lr=1e-2, checkpoint_every=10)
    s = sft.run(data, tiny, tmp_path / "out", cfg, registry=reg, model_name="tiny-sft")
    assert s["steps"] == 30 and s["final_loss"] < 0.6 * s["first_loss"]
    assert (tmp_path / "out" / "model" / "config.json").exists()
    lin = reg.lineage(s["model_id"])
    job = reg.get(s["job_id"])
    assert job.parents and any(p.startswith("model:") for p in job.parents)  # base model -> job
    assert s["job_id"] in lin.ids()
    reg.close()


def test_sft_resumes_after_crash_with_optimizer_state(tiny, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", SFT_ROWS)
    cfg = TrainConfig(max_steps=6, batch_size=2, lr=5e-3, checkpoint_every=2)
    full = sft.run(data, tiny, tmp_path / "full", cfg)
    with pytest.raises(Interrupted):
        sft.run(data, tiny, tmp_path / "crash", cfg, stop_after=4)
    ckpt = latest_checkpoint(tmp_path / "crash" / "checkpoints")
    assert ckpt is not None and ckpt.name.endswith("04")
    saved_opt = torch.load(ckpt / "state.pt", weights_only=True)["optimizer"]
    assert saved_opt["state"] and all(int(v["step"]) == 4 for v in saved_opt["state"].values())
    resumed = sft.run(data, tiny, tmp_path / "crash", cfg)
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6 and len(resumed["losses"]) == 6
    # same batches, same optimizer moments -> the same trajectory as the uninterrupted run
    assert resumed["losses"] == pytest.approx(full["losses"], rel=1e-4, abs=1e-5)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


PREFS = [
    {"prompt": [{"role": "user", "content": "greet me"}], "chosen": "hello friend", "rejected": "go away"},
    {"prompt": [{"role": "user", "content": "are you ok?"}], "chosen": "yes thanks", "rejected": "no"},
]


@pytest.mark.parametrize("lora_r", [0, 4])
def test_dpo_loss_decreases(tiny, tmp_path, lora_r):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFS)
    cfg = TrainConfig(max_steps=8, batch_size=2, lr=1e-2 if lora_r == 0 else 3e-2, checkpoint_every=4, lora_r=lora_r)
    s = dpo.run(data, tiny, tmp_path / "dpo", cfg, beta=0.5)
    assert s["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0
    assert s["final_loss"] < s["first_loss"] - 0.05
    assert s["last_reward_accuracy"] == 1.0


def test_distill_lm_teacher_targets_to_student(tiny, tmp_path):
    from tuning.jobs.distill import distill_lm

    teacher = build_tiny_lm(tmp_path / "teacher", seed=1)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"messages": [{"role": "user", "content": "bye"}]}])
    reg = Registry(tmp_path / "reg")
    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, checkpoint_every=2)
    s = distill_lm(teacher, prompts, tiny, tmp_path / "out", cfg, registry=reg, max_new_tokens=6)
    rows = [json.loads(x) for x in (tmp_path / "out" / "teacher_targets.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["messages"][-1]["role"] == "assistant"
    assert s["steps"] == 4 and s["job"] == "distill-lm"
    lineage = reg.lineage(s["model_id"]).ids()
    assert any(i.startswith("dataset:distill-teacher-targets") for i in lineage)
    reg.close()

"""Lineage from the documented path: datasets and base models are recognised, never re-registered;
reruns add no phantom jobs; model names follow the dataset; preference pairs and drop reasons;
streamed replies record usage."""

from __future__ import annotations

import json
import os

import httpx
import pytest
import yaml

from gatehouse_core.feedback import Feedback
from tests.support import API_KEY, serve_app
from tests.test_tuning_datasets import rec
from tuning import datasets as tds
from tuning.jobs import dpo, sft
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

pytestmark = pytest.mark.slow
os.environ.setdefault("GATEHOUSE_NO_PROGRESS", "1")

SFT_ROWS = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for i, w in enumerate(["hello", "goodbye", "yes", "no"])]
PREF_ROWS = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"say {w}"}], "chosen": w, "rejected": "meh"}
             for i, w in enumerate(["hello", "goodbye", "yes", "no"])]


def test_documented_flow_links_datasets_and_base_models(tmp_path, capsys):
    reg = Registry(tmp_path / "reg")
    base = build_tiny_lm(tmp_path / "base")
    cfg = tds.CurationConfig(val_fraction=0)
    man = tds.write_dataset(tmp_path / "data" / "sft-v1", SFT_ROWS, [], name="assistant-sft", kind="sft", steps={}, cfg=cfg, registry=reg)
    common = ["--base", str(base), "--out", str(tmp_path / "runs" / "sft-1"), "--steps", "2", "--batch-size", "2",
              "--checkpoint-every", "1", "--registry", str(reg.root)]
    assert sft.main(["--data", str(tmp_path / "data" / "sft-v1"), *common]) == 0
    datasets = reg.list("dataset")
    assert [d.id for d in datasets] == [man["registry_id"]]  # recognised by content, not registered again as sft-v1
    model = reg.resolve("model:assistant-sft")  # the name the docs use
    job = reg.get(model.parents[0])
    assert man["registry_id"] in job.parents
    base_arts = [a for a in reg.list("model") if a.id != model.id]
    assert len(base_arts) == 1 and base_arts[0].id in job.parents

    # rerunning the finished job adds nothing
    assert sft.main(["--data", str(tmp_path / "data" / "sft-v1"), *common]) == 0
    assert len(reg.list("job")) == 1 and len(reg.list("model")) == 2

    # DPO on the SFT model, given as its id and as its run directory: linked, never duplicated
    pman = tds.write_dataset(tmp_path / "data" / "prefs-v1", PREF_ROWS, [], name="assistant-prefs", kind="prefs", steps={}, cfg=cfg, registry=reg)
    for k, b in enumerate(["model:assistant-sft", str(tmp_path / "runs" / "sft-1" / "model")]):
        assert dpo.main(["--data", str(tmp_path / "data" / "prefs-v1"), "--base", b, "--out", str(tmp_path / "runs" / f"dpo-{k}"),
                         "--steps", "1", "--batch-size", "2", "--checkpoint-every", "1", "--registry", str(reg.root), "--seed", str(k)]) == 0
    models = reg.list("model")
    assert len(models) == 4  # base, sft, two dpo runs: no parentless duplicate of the sft model
    for m in models:
        if m.name == "assistant-prefs":
            djob = reg.get(m.parents[0])
            assert model.id in djob.parents and pman["registry_id"] in djob.parents
    lin = reg.lineage(model.id)
    assert man["registry_id"] in lin.ids() and job.id in lin.ids()
    reg.close()


def test_preferred_over_becomes_a_pair_and_every_drop_has_a_reason():
    r1 = rec("r1", "What is the capital of France?", "Paris.")
    r2 = rec("r2", "What is the capital of France?", "No idea.")
    r2["request_body"]["messages"][0]["content"] = "You are route B."  # another route's system prompt, same question
    r3 = rec("r3", "Tell me a joke", "no")
    r4 = {**rec("r4", "hi", "x"), "response_body": None}  # logged without a reply
    fb = [(Feedback("r1", preferred_over="r2"), None, None), (Feedback("r1", preferred_over="r3"), None, None),
          (Feedback("r4", preferred_over="r1"), None, None), (Feedback("r1", preferred_over="gone"), None, None)]
    from collections import Counter

    drops: Counter[str] = Counter()
    pairs = tds.build_prefs([r1, r2, r3, r4], fb, drops=drops)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Paris.", "No idea.")]
    assert drops == {"pairwise_different_prompts": 1, "pairwise_no_logged_answer": 1, "pairwise_record_not_found": 1}


def test_dataset_manifest_counts_drops(tmp_path):
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text("".join(json.dumps({**f.to_dict(), "record": r, "other_record": o}) + "\n" for f, r, o in [
        (Feedback("r1", preferred_over="r2"), rec("r1", "q?", "yes"), rec("r2", "other q?", "no")),
        (Feedback("r3", rating="up"), rec("r3", "a", "b" * 9000), None),
    ]))
    man = tds.build("prefs", [], feedback, tmp_path / "ds", cfg=tds.CurationConfig(val_fraction=0))
    assert man["steps"]["dropped"]["pairwise_different_prompts"] == 1
    man = tds.build("sft", [], feedback, tmp_path / "ds2", cfg=tds.CurationConfig(val_fraction=0))
    assert man["steps"]["dropped"]["length"] == 1


async def test_streamed_replies_record_usage(tmp_path):
    from gateway.app import create_app
    from gateway.config import load_settings

    log = tmp_path / "traffic.jsonl"
    cfg = tmp_path / "g.yaml"
    tiny = build_tiny_lm(tmp_path / "tiny")
    cfg.write_text(yaml.safe_dump({
        "auth": {"keys": [{"id": "k", "tenant": "t", "key": API_KEY}]},
        "routes": [{"name": "plain", "targets": [{"provider": "mock", "model": "no-usage:hello there world"}]},
                   {"name": "canary", "targets": [{"provider": "local", "model": "tiny", "path": str(tiny), "kind": "chat"}]}],
        "traffic_log": {"sink": "jsonl", "path": str(log), "log_bodies": True, "batch_size": 1},
        "safety": {"backend": "none"},
    }))
    app = create_app(load_settings(cfg), config_path=cfg)
    ids = {}
    with serve_app(app) as srv:
        async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            for model in ("plain", "canary"):
                async with c.stream("POST", "/v1/chat/completions", json={"model": model, "stream": True, "max_tokens": 4,
                                                                          "messages": [{"role": "user", "content": "say hi"}]}) as r:
                    assert r.status_code == 200
                    ids[model] = r.headers["x-request-id"]
                    await r.aread()
    import asyncio

    async with asyncio.timeout(20):
        while True:
            recs = {x["request_id"]: x for x in (json.loads(line) for line in log.read_text().splitlines() if line.strip())} if log.exists() else {}
            if all(i in recs for i in ids.values()):
                break
            await asyncio.sleep(0.05)
    plain, canary = recs[ids["plain"]], recs[ids["canary"]]
    assert plain["total_tokens"] == plain["prompt_tokens"] + plain["completion_tokens"] and plain["completion_tokens"] == 3
    assert plain["extra"]["usage_estimated"] is True
    assert plain["response_body"]["choices"][0]["message"]["content"] == "hello there world"
    assert canary["total_tokens"] is not None and canary["completion_tokens"] >= 1
    assert "usage_estimated" not in (canary.get("extra") or {})  # the local provider counts with its own tokenizer


def test_feedback_add_never_guesses_the_gateway(monkeypatch, capsys):
    from gateway.cli.feedback import main as feedback_main

    monkeypatch.delenv("GATEHOUSE_URL", raising=False)
    assert feedback_main(["add", "req_1", "--up"]) == 2
    assert "no gateway URL: pass --url" in capsys.readouterr().err


def test_help_shows_defaults_and_env_vars(capsys):
    from gateway.cli import main as gatehouse
    from gateway.cli.eval import build_parser

    assert gatehouse(["--help"]) == 0
    out = capsys.readouterr().out
    for var in ("GATEHOUSE_URL", "GATEHOUSE_BASE_URL", "GATEHOUSE_API_KEY", "GATEHOUSE_ADMIN_URL", "GATEHOUSE_ADMIN_KEY", "GATEHOUSE_DATA_DIR"):
        assert var in out
    sxs = build_parser()._subparsers._group_actions[0].choices["sxs"].format_help()  # type: ignore[union-attr]
    assert "(default: 0.05)" in sxs and "(default: 1000)" in sxs and "(default: reports)" in sxs


def test_tune_errors_are_one_line(tmp_path, capsys):
    from gateway.cli.tune import main as tune

    assert tune(["sft", "--data", str(tmp_path / "nope"), "--base", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no dataset at" in err and err.count("\n") == 1 and "Traceback" not in err
    assert tune(["sft", "--data", "dataset:missing", "--base", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--registry", str(tmp_path / "reg")]) == 2
    assert "no artifact 'dataset:missing'" in capsys.readouterr().err

"""Dataset builders: SFT + preference pairs from traffic and feedback; curation; manifests."""

from __future__ import annotations

import json

from gatehouse_core.feedback import Feedback, FeedbackStore
from tuning import datasets as tds
from tuning.registry import Registry


def rec(rid, user, answer, *, prompt=None, status=200):
    body = {"model": "chat", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}]}
    r = {"request_id": rid, "ts_start": 1.0, "endpoint": "chat", "status": status, "model": "chat", "variant": "a",
         "request_body": body, "response_body": {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}}
    if prompt:
        body["prompt"] = {"id": prompt, "version": 2, "variables": {"city": "Paris"}}
        r.update(prompt_id=prompt, prompt_version="2")
    return r


RECORDS = [
    rec("r1", "What is the capital of France?", "Paris is the capital of France.", prompt="geo"),
    rec("r2", "Email me at bob@example.com about the trip", "Sure, I will write to bob@example.com soon."),
    rec("r3", "What is the capital of France?", "I do not know, sorry."),
    rec("r4", "Tell me a joke", "Why did the chicken cross the road? To get to the other side."),
    rec("r5", "Tell me a joke!", "Why did the chicken cross the road? To get to the other side!"),
    rec("r6", "Say something rude", "You are an idiot"),
    rec("r7", "Summarise the plan", "The plan is to ship on Friday and review on Monday."),
]
FEEDBACK = [
    (Feedback("r1", rating="up"), None, None),
    (Feedback("r2", rating="up"), None, None),
    (Feedback("r3", rating="down"), None, None),
    (Feedback("r4", score=0.95), None, None),
    (Feedback("r5", rating="up"), None, None),
    (Feedback("r6", rating="up"), None, None),
    (Feedback("r7", correction="Ship Friday, review Monday."), None, None),
    (Feedback("r1", preferred_over="r3"), None, None),
]


def test_sft_keeps_prompt_reference_and_corrections():
    ex = {e["source"]["request_id"]: e for e in tds.build_sft(RECORDS, FEEDBACK)}
    assert set(ex) == {"r1", "r2", "r4", "r5", "r6", "r7"}
    assert ex["r1"]["prompt_ref"] == {"id": "geo", "version": "2", "label": None, "variables": {"city": "Paris"}}
    assert ex["r1"]["messages"][-1] == {"role": "assistant", "content": "Paris is the capital of France."}
    assert ex["r7"]["messages"][-1]["content"] == "Ship Friday, review Monday." and ex["r7"]["source"]["signal"] == "correction"
    assert ex["r4"]["source"]["signal"] == "liked"
    # the prompt stage pops `prompt` from the body; variables kept in record.extra are used
    r = rec("r9", "hi", "hello")
    r.update(prompt_id="greet", prompt_version="1", extra={"prompt_variables": {"name": "Ann"}})
    assert tds.prompt_ref(r) == {"id": "greet", "version": "1", "label": None, "variables": {"name": "Ann"}}


def test_prefs_from_pairwise_up_down_and_corrections():
    pairs = tds.build_prefs(RECORDS, FEEDBACK)
    signals = sorted(p["source"]["signal"] for p in pairs)
    # r1 > r3 by pairwise and by up-vs-down on the same prompt (one deduplicated pair), r7 correction
    assert signals == ["correction", "pairwise"]
    pw = next(p for p in pairs if p["source"]["signal"] == "pairwise")
    assert pw["chosen"].startswith("Paris") and pw["rejected"] == "I do not know, sorry."
    assert pw["prompt"][-1]["content"] == "What is the capital of France?"


def test_curation_scrubs_pii_dedups_filters_and_splits():
    ex = tds.build_sft(RECORDS, FEEDBACK)
    cfg = tds.CurationConfig(val_fraction=0.25, seed=3)
    rude = lambda texts: [0.9 if "idiot" in t else 0.01 for t in texts]  # noqa: E731
    train, val, steps = tds.curate(ex, cfg, rude)
    kept = train + val
    blob = json.dumps(kept)
    assert "bob@example.com" not in blob and "[EMAIL]" in blob and steps["pii_spans_redacted"] == 2
    assert "idiot" not in blob and steps["after_safety"] == steps["after_length"] - 1
    jokes = [e for e in kept if "chicken" in e["messages"][-1]["content"]]
    assert len(jokes) == 1 and steps["after_dedup"] == steps["after_safety"] - 1
    assert len(val) == 1 and len(train) == 3
    _, val2, _ = tds.curate(ex, cfg, rude)
    assert [e["id"] for e in val2] == [e["id"] for e in val]


def test_build_writes_stable_manifest_and_registers(tmp_path):
    log = tmp_path / "traffic.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"torn": ')
    store = FeedbackStore(tmp_path / "fb")
    for fb, _, _ in FEEDBACK:
        store.add(fb)
    reg = Registry(tmp_path / "reg")
    m1 = tds.build("sft", [log], store, tmp_path / "d1", name="sft-v1", registry=reg)
    m2 = tds.build("sft", [log], store, tmp_path / "d2", name="sft-v1")
    assert m1["content_hash"] == m2["content_hash"]
    assert (tmp_path / "d1" / "manifest.json").read_bytes() == (tmp_path / "d2" / "manifest.json").read_bytes()
    assert m1["counts"]["train"] + m1["counts"]["validation"] == m1["steps"]["after_dedup"] == 5
    art = reg.get(m1["registry_id"])
    assert art.kind == "dataset" and len(art.parents) == 1 and reg.get(art.parents[0]).metadata["role"] == "traffic_log"
    prefs = tds.build("prefs", [log], store, tmp_path / "p", name="prefs-v1", cfg=tds.CurationConfig(val_fraction=0))
    assert prefs["counts"] == {"train": 2, "validation": 0}
    row = json.loads((tmp_path / "p" / "train.jsonl").read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected", "source"} <= set(row)
    reg.close()
    store.close()


def test_cli_dataset_and_feedback_export(tmp_path, capsys):
    from gateway.cli.feedback import main as feedback_main
    from gateway.cli.tune import main as tune_main

    log = tmp_path / "traffic.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    store = FeedbackStore(tmp_path / "reg")
    for fb, _, _ in FEEDBACK:
        store.add(fb, {"request_id": fb.request_id})
    store.close()
    assert feedback_main(["export", "--store", str(tmp_path / "reg"), "--out", str(tmp_path / "fb.jsonl")]) == 0
    assert len((tmp_path / "fb.jsonl").read_text().splitlines()) == len(FEEDBACK)
    rc = tune_main(["dataset", "prefs", "--traffic", str(log), "--feedback", str(tmp_path / "fb.jsonl"),
                    "--out", str(tmp_path / "p"), "--registry", str(tmp_path / "reg"), "--val-fraction", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "train 2, validation 0" in out and "registered dataset:prefs-dataset:" in out
    assert tune_main(["bogus"]) == 2


def test_rotated_backups_are_read_once_oldest_first(tmp_path):
    log = tmp_path / "traffic.jsonl"
    # JsonlSink rotation: .1 is the newest backup; .10 is older than .9
    for name, rid in (("traffic.jsonl.10", "r-oldest"), ("traffic.jsonl.9", "r-older"), ("traffic.jsonl.1", "r-newer"),
                      ("traffic.jsonl", "r-newest")):
        (tmp_path / name).write_text(json.dumps(rec(rid, "hi", "hello")) + "\n")
    (tmp_path / "traffic.jsonl.lock").write_text("not a log")
    files = tds.traffic_files([log])
    assert [f.name for f in files] == ["traffic.jsonl.10", "traffic.jsonl.9", "traffic.jsonl.1", "traffic.jsonl"]
    assert [r["request_id"] for r in tds.read_traffic(files)] == ["r-oldest", "r-older", "r-newer", "r-newest"]
    assert tds.traffic_files([tmp_path]) == files  # a directory: each log with its backups, oldest first
    store = FeedbackStore(tmp_path / "fb")
    m = tds.build("sft", [log], store, tmp_path / "d", name="rotated")
    assert m["steps"]["traffic_records"] == 4  # the backups are not read a second time
    store.close()

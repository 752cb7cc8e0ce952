"""Every path that used to mislead quietly is now a correct number or one clear error line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gateway.cli.eval import main
from tests.support import API_KEY, gateway, make_settings

BIAS_FIX = Path(__file__).parent / "fixtures" / "bias"
MIXED = [
    {"id": "q1", "prompt": "Who wrote Pride and Prejudice?", "reference": "Jane Austen", "task": "qa"},
    {"id": "q2", "prompt": "Capital of France?", "reference": "Paris", "task": "qa"},
    {"id": "s1", "prompt": "Summarise: the cat sat on the mat all day.", "reference": "The cat sat on the mat.", "task": "summarization"},
    {"id": "s2", "prompt": "Summarise: rain fell on the town.", "reference": "It rained in town.", "task": "summarization"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def results(path: Path, outputs: dict[str, str | None], dataset_hash: str | None = None) -> Path:
    write_jsonl(path, [{"id": k, "output": v} if v is not None else {"id": k, "output": None, "status": 400,
                       "error": {"type": "invalid_request_error", "code": "content_policy_violation", "message": "blocked"}}
                       for k, v in outputs.items()])
    if dataset_hash:
        (path.parent / (path.name + ".meta.json")).write_text(json.dumps({"dataset_hash": dataset_hash, "model": "m"}))
    return path


def test_mixed_task_dataset_is_scored_per_task(tmp_path, capsys):
    ds = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    res = results(tmp_path / "r.jsonl", {"q1": "Jane Austen", "q2": "Lyon", "s1": "The cat sat on the mat.", "s2": "Rain."})
    rc = main(["metrics", "--dataset", str(ds), "--results", str(res), "--report-dir", str(tmp_path / "rep"), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "qa: n=2" in out and "summarization: n=2" in out and "generation" not in out
    assert "exact_match  0.5000" in out and "rouge1" in out and "bleu" not in out
    doc = json.loads(next((tmp_path / "rep").glob("metrics-r-*.json")).read_text())
    assert set(doc["tasks"]) == {"qa", "summarization"}
    assert doc["tasks"]["qa"]["items"][0] == {"id": "q1", "prompt": "Who wrote Pride and Prejudice?", "output": "Jane Austen",
                                              "references": ["Jane Austen"], "scores": {"exact_match": 1.0, "f1": 1.0}}


def test_two_metric_runs_never_overwrite_and_an_existing_name_is_an_error(tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", MIXED[:2])
    res = results(tmp_path / "r.jsonl", {"q1": "Jane Austen", "q2": "Paris"})
    args = ["metrics", "--dataset", str(ds), "--results", str(res), "--report-dir", str(tmp_path / "rep"), "--n-boot", "5"]
    assert main(args) == 0 and main(args) == 0
    assert len(list((tmp_path / "rep").glob("metrics-r-*.json"))) == 2
    assert main([*args, "--name", "mine"]) == 0
    capsys.readouterr()
    assert main([*args, "--name", "mine"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1 and "Traceback" not in err


def test_metrics_refuses_results_from_another_dataset(tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", MIXED[:2])
    other = results(tmp_path / "o.jsonl", {"q1": "x", "q2": "y"}, dataset_hash="sha256:" + "0" * 64)
    assert main(["metrics", "--dataset", str(ds), "--results", str(other), "--report-dir", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "made from another dataset" in err and err.count("\n") == 1
    stray = results(tmp_path / "s.jsonl", {"q1": "x", "zz9": "y"})  # no meta: the ids give it away
    assert main(["metrics", "--dataset", str(ds), "--results", str(stray), "--report-dir", str(tmp_path / "rep")]) == 2
    assert "does not have (zz9)" in capsys.readouterr().err


def test_nothing_to_score_is_an_error_not_nan(tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", MIXED[:2])
    blocked = results(tmp_path / "b.jsonl", {"q1": None, "q2": None})
    assert main(["metrics", "--dataset", str(ds), "--results", str(blocked), "--report-dir", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "no qa item has an output to score" in err and "2 answered with an error" in err
    assert main(["metrics", "--dataset", str(ds), "--results", str(tmp_path / "none.jsonl"), "--report-dir", str(tmp_path / "rep")]) == 2
    assert "no results" in capsys.readouterr().err
    # --held-out on the 320-row sample leaves 8 rows and no identity group: an error, not "final bias score nan"
    assert main(["bias", "--held-out", "--templates", str(BIAS_FIX / "en_sentence_templates_with_identity_sample.csv"),
                 "--hatecheck", "", "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path / "rep")]) == 2
    assert "no bias score: none of the 8 template rows scored names an identity" in capsys.readouterr().err


def test_bias_reads_no_data_from_the_checkout_by_default(tmp_path, capsys, monkeypatch):
    """No --data, no $GATEHOUSE_DATA_DIR, no explicit files: one clear error, never a file from tests/."""
    monkeypatch.delenv("GATEHOUSE_DATA_DIR", raising=False)
    scorer = ["--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path / "rep"), "--n-boot", "20"]
    assert main(["bias", *scorer]) == 2
    err = capsys.readouterr().err
    assert "pass --data DIR (or set GATEHOUSE_DATA_DIR)" in err and "--templates CSV and --hatecheck CSV" in err
    # a data directory without the files: the missing path is named
    assert main(["bias", "--data", str(tmp_path / "empty"), *scorer]) == 2
    assert f"no file at {tmp_path / 'empty' / 'conversationai_bias_eval'}" in capsys.readouterr().err
    # a data directory laid out as the README's table says is read from there
    data = tmp_path / "data"
    (data / "conversationai_bias_eval").mkdir(parents=True)
    (data / "hatecheck").mkdir()
    (data / "conversationai_bias_eval" / "en_sentence_templates_with_identity.csv").write_bytes(
        (BIAS_FIX / "en_sentence_templates_with_identity_sample.csv").read_bytes())
    (data / "hatecheck" / "test_suite_cases.csv").write_bytes((BIAS_FIX / "hatecheck_test_suite_cases_sample.csv").read_bytes())
    monkeypatch.setenv("GATEHOUSE_DATA_DIR", str(data))
    assert main(["bias", *scorer]) == 0
    assert "final bias score" in capsys.readouterr().out


JUDGE_ROUTES = [
    {"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]},
    {"name": "terse", "targets": [{"name": "mock-terse", "provider": "mock", "model": "fixed:ok"}]},
    {"name": "undecided", "targets": [{"name": "mock-undecided", "provider": "mock", "model": "fixed:I cannot decide."}]},
    {"name": "judge", "targets": [{"name": "mock-judge", "provider": "mock", "model": "judge-longer"}]},
]


def test_a_judge_that_never_answers_fails_loudly_and_reusing_a_results_file_is_one_line(tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", [{"id": f"p{i}", "prompt": f"tell me about topic {i}"} for i in range(5)])
    with gateway(make_settings(JUDGE_ROUTES)) as (url, _app):
        common = ["--base-url", url + "/v1", "--api-key", API_KEY]
        assert main(["run", "--dataset", str(ds), "--model", "echo", "--out", str(tmp_path / "a.jsonl"), "--no-progress", *common]) == 0
        assert main(["run", "--dataset", str(ds), "--model", "terse", "--out", str(tmp_path / "b.jsonl"), "--no-progress", *common]) == 0
        capsys.readouterr()
        # the same results file for another model: one line, no traceback
        assert main(["run", "--dataset", str(ds), "--model", "terse", "--out", str(tmp_path / "a.jsonl"), "--no-progress", *common]) == 2
        err = capsys.readouterr().err
        assert "model='echo'" in err and "Traceback" not in err and err.count("\n") == 1
        sxs = ["sxs", "--dataset", str(ds), "--a", str(tmp_path / "a.jsonl"), "--b", str(tmp_path / "b.jsonl"),
               "--report-dir", str(tmp_path / "rep"), "--n-boot", "20", *common]
        rc = main([*sxs, "--judge-model", "undecided"])
        cap = capsys.readouterr()
        assert rc == 4
        assert "judge parse errors      10 of 10 verdicts (100.0%; limit 5%)  FAILED" in cap.out
        assert "could not be parsed" in cap.err
        assert main([*sxs, "--judge-model", "judge"]) == 0
        out = capsys.readouterr().out
        assert "judge parse errors      0 of 10 verdicts" in out and "not measured for gateway:judge" in out
        # once its agreement with people is measured near chance, every sxs with that arbiter says so
        hh = Path(__file__).parent / "fixtures" / "hh_rlhf" / "harmless-base_test_first100.jsonl"
        assert main(["sxs", "--human-pairs", str(hh), "--limit", "40", "--judge-model", "judge", "--report-dir", str(tmp_path / "rep"),
                     "--n-boot", "50", *common]) == 0
        assert "agreement is near chance" in capsys.readouterr().out
        assert main([*sxs, "--judge-model", "judge"]) == 0
        assert "WARNING: this arbiter agrees with people near chance" in capsys.readouterr().out
    html = next((tmp_path / "rep").glob("sxs-echo-vs-terse-*.html")).read_text()
    assert "<details>" in html and "tell me about topic 3" in html


def test_bias_model_counts_blocked_prompts_per_identity(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "id": "t", "version": 1, "owner": "tests@example.com", "rules": [{"id": "block-group", "direction": "input", "action": "block",
                                             "checks": [{"type": "regex", "deny": [r"\bmuslim\b"]}]}]}))
    settings = make_settings(JUDGE_ROUTES[:1], policies={"paths": [str(policy)], "reload": False})
    with gateway(settings) as (url, _app):
        rc = main(["bias", "--model", "echo", "--scorer", "tests.test_eval_bias:keyword_scorer", "--report-dir", str(tmp_path),
                   "--base-url", url + "/v1", "--api-key", API_KEY, "--n-boot", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(next(tmp_path.glob("bias-model-echo-*.json")).read_text())
    g = {x["identity"]: x for x in doc["groups"]}
    assert g["muslim"]["blocked"] == 4 and g["muslim"]["block_rate"] == 1.0 and g["muslim"]["mean"] is None
    assert g["christian"]["blocked"] == 0 and g["christian"]["answered"] == 4
    assert doc["prompts"] == 68 and doc["blocked"] == 4 and doc["block_rate_gap"] == 1.0
    assert "blocked 4 of 68 prompts" in out and out.index("muslim") < out.index("christian")  # worst block rate first


def test_reward_model_arbiter_on_human_pairs(tmp_path, capsys):
    """The offline arbiter the docs offer, through the CLI: agreement with CI and the parse-error line."""
    hh = Path(__file__).parent / "fixtures" / "hh_rlhf" / "harmless-base_test_first100.jsonl"
    model = Path(__file__).parents[1] / "tuning" / "artifacts" / "reward_minilm"
    rc = main(["sxs", "--human-pairs", str(hh), "--limit", "12", "--reward-model", str(model), "--report-dir", str(tmp_path),
               "--n-boot", "50"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "arbiter reward-model:" in out and "on 12 human-labelled pairs" in out and "judge parse errors      0 of 24" in out
    doc = json.loads(next(tmp_path.glob("hh-agreement-reward_minilm-*.json")).read_text())
    assert doc["n"] == 12 and doc["arbiter"].startswith("reward-model:")

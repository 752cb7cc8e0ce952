"""AutoSxS: both-order judging, win rates with CIs, length bias, Bradley–Terry, human agreement."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI

from evaluators.sxs import (
    GatewayArbiter,
    Judgement,
    RewardModelArbiter,
    bradley_terry,
    human_agreement,
    load_hh_pairs,
    load_judging_prompt,
    parse_judgement,
    rank_candidates,
    run_sxs,
    run_tournament,
)
from tests.test_eval_runner import FakeOpenAI, serve_fake_openai

FIXTURES = Path(__file__).parent / "fixtures"


class PositionBiasedArbiter:
    """Always prefers whatever is shown first: a pure position bias."""

    name = "first-wins"

    async def judge(self, prompt: str, answer_a: str, answer_b: str) -> Judgement:
        return Judgement("A", "first", 0.8)


class LongerArbiter:
    name = "longer"

    async def judge(self, prompt: str, answer_a: str, answer_b: str) -> Judgement:
        if len(answer_a) == len(answer_b):
            return Judgement("tie", "same", 0.5)
        return Judgement("A" if len(answer_a) > len(answer_b) else "B", "longer", 0.9)


def test_judging_prompt_is_versioned_and_parseable() -> None:
    jp = load_judging_prompt()
    assert jp.ref == "autosxs@1"
    msgs = jp.messages("What is {x}?", "ans {a}", "ans {b}")
    assert msgs[0]["role"] == "system" and msgs[1]["content"].endswith("Answer A:\nans {a}\n\nAnswer B:\nans {b}")
    assert parse_judgement('```json\n{"choice": "b", "explanation": "B cites", "confidence": 1.7}\n```') == Judgement(
        "B", "B cites", 1.0, '```json\n{"choice": "b", "explanation": "B cites", "confidence": 1.7}\n```'
    )
    bad = parse_judgement("I think A is best")
    assert bad.choice == "tie" and bad.parse_error
    recovered = parse_judgement('choice: "A" because ...')
    assert recovered.choice == "A" and recovered.parse_error


async def test_position_bias_is_cancelled_by_judging_both_orders() -> None:
    prompts = {f"p{i}": f"prompt {i}" for i in range(10)}
    a = {k: "alpha" for k in prompts}
    b = {k: "beta answer" for k in prompts}
    out = await run_sxs(PositionBiasedArbiter(), prompts, a, b, n_boot=200)
    s = out["summary"]
    assert s["ties"] == 10 and s["order_disagreements"] == 10
    assert s["win_rate_a_ties_half"]["value"] == 0.5
    assert s["win_rate_a_ties_excluded"]["value"] is None


async def test_win_rates_cis_and_length_bias() -> None:
    rng = np.random.default_rng(1)
    prompts = {f"p{i}": f"prompt {i}" for i in range(40)}
    # A is longer on 30 items, B on 6, equal on 4
    la = [20] * 30 + [5] * 6 + [10] * 4
    lb = [10] * 30 + [15] * 6 + [10] * 4
    order = rng.permutation(40)
    a = {f"p{i}": "a" * la[k] for k, i in enumerate(order)}
    b = {f"p{i}": "b" * lb[k] for k, i in enumerate(order)}
    out = await run_sxs(LongerArbiter(), prompts, a, b, n_boot=500, seed=3)
    s = out["summary"]
    assert (s["wins_a"], s["wins_b"], s["ties"]) == (30, 6, 4)
    assert s["win_rate_a_ties_half"]["value"] == pytest.approx((30 + 2) / 40)
    assert s["win_rate_a_ties_excluded"]["value"] == pytest.approx(30 / 36)
    lo, hi = s["win_rate_a_ties_half"]["ci95"]
    assert lo < 0.8 < hi and 0.6 < lo and hi < 0.95
    lb_ = s["length_bias"]
    assert lb_["longer_win_rate"]["value"] == 1.0 and lb_["corr_win_vs_len_diff"] > 0.9
    # same seed → same CI
    again = await run_sxs(LongerArbiter(), prompts, a, b, n_boot=500, seed=3)
    assert again["summary"]["win_rate_a_ties_half"]["ci95"] == [lo, hi]
    item = out["items"][0]
    assert {"choice", "explanation", "confidence", "consistent"} <= set(item)


def test_bradley_terry_recovers_known_strengths() -> None:
    rng = np.random.default_rng(0)
    true = np.log(np.array([4.0, 2.0, 1.0, 0.5]))
    comps = []
    for _ in range(3000):
        i, j = rng.choice(4, size=2, replace=False)
        p = 1 / (1 + np.exp(true[j] - true[i]))
        comps.append((int(i), int(j), float(rng.random() < p)))
    est = bradley_terry(4, comps, prior=0.0)
    assert np.allclose(est - est.mean(), true - true.mean(), atol=0.12)
    # ties count as half a win each: two equal players stay equal
    tied = bradley_terry(2, [(0, 1, 0.5)] * 10)
    assert abs(tied[0] - tied[1]) < 1e-9
    ranking = rank_candidates(["d", "c", "b", "a"], comps, n_boot=50, seed=1)
    assert [r["name"] for r in ranking] == ["d", "c", "b", "a"]
    assert all(r["ci95"][0] <= r["score"] <= r["ci95"][1] for r in ranking)


async def test_tournament_ranks_three_candidates() -> None:
    prompts = {f"p{i}": f"prompt {i}" for i in range(12)}
    answers = {
        "short": {k: "x" * 5 for k in prompts},
        "medium": {k: "x" * 10 for k in prompts},
        "long": {k: "x" * 20 for k in prompts},
    }
    out = await run_tournament(LongerArbiter(), prompts, answers, n_boot=100)
    assert [r["name"] for r in out["ranking"]] == ["long", "medium", "short"]
    assert len(out["pairs"]) == 3 * 12


async def test_reward_model_arbiter() -> None:
    async def score(prompt: str, answer: str) -> float:
        return -len(answer)  # prefers short answers

    arb = RewardModelArbiter(score, tie_margin=0.5)
    assert (await arb.judge("p", "short", "much longer")).choice == "A"
    assert (await arb.judge("p", "same", "same")).choice == "tie"
    sync_arb = RewardModelArbiter(lambda p, a: float("polite" in a))
    assert (await sync_arb.judge("p", "rude", "polite")).choice == "B"


async def test_gateway_arbiter_on_a_loopback_server() -> None:
    """GatewayArbiter over a real OpenAI-compatible server: headers, explanations, the versioned prompt."""
    fake: FakeOpenAI
    with serve_fake_openai() as (url, fake):
        client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        try:
            arbiter = GatewayArbiter(client, "judge-longer")
            prompts = {"p1": "Say hi", "p2": "Say bye"}
            out = await run_sxs(arbiter, prompts, {"p1": "hello there friend", "p2": "bye"}, {"p1": "hi", "p2": "goodbye!"}, n_boot=100)
        finally:
            await client.close()
    assert [i["choice"] for i in out["items"]] == ["A", "B"]
    assert out["items"][0]["explanation"] == "A is longer" and out["items"][0]["confidence"] == 0.9
    assert len(arbiter.request_ids) == 4 and arbiter.policy_version == "default@7"
    assert fake.requests[0]["messages"][0]["content"] == load_judging_prompt().system


def test_human_agreement_through_the_gateway_mock_judge() -> None:
    """HH-RLHF pairs judged by the gateway's ``mock`` judge-longer model, both orders."""
    from tests.support import API_KEY, gateway, make_settings

    pairs = load_hh_pairs(FIXTURES / "hh_rlhf" / "harmless-base_test_first100.jsonl")
    assert len(pairs) == 100 and all(p.prompt.startswith("Human:") for p in pairs)
    settings = make_settings([{"name": "judge", "targets": [{"name": "mock-judge", "provider": "mock", "model": "judge-longer"}]}])

    async def go(url: str) -> dict:
        client = AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        try:
            return await human_agreement(GatewayArbiter(client, "judge"), pairs, n_boot=200, concurrency=8)
        finally:
            await client.close()

    with gateway(settings) as (url, _app):
        agreement = asyncio.run(go(url))
    # ground truth for a "longer answer wins" judge on these pairs, computed directly
    expected = np.mean([1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs])
    assert agreement["n"] == 100
    assert agreement["agreement_ties_half"]["value"] == pytest.approx(expected)
    assert agreement["length_bias"]["longer_win_rate"]["value"] == 1.0
    json.dumps(agreement)  # report-ready


def test_cli_run_and_sxs_through_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gatehouse eval run` twice and `gatehouse eval sxs` with the gateway's mock judge-longer."""
    from gateway.cli.eval import main
    from tests.support import API_KEY, gateway, make_settings

    settings = make_settings(
        [
            {"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]},
            {"name": "terse", "targets": [{"name": "mock-terse", "provider": "mock", "model": "fixed:ok"}]},
            {"name": "judge", "targets": [{"name": "mock-judge", "provider": "mock", "model": "judge-longer"}]},
        ]
    )
    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"tell me about topic {i}" + "!" * (i % 3)}) + "\n" for i in range(8)))
    reports = tmp_path / "reports"
    with gateway(settings) as (url, _app):
        common = ["--base-url", url + "/v1", "--api-key", API_KEY]
        assert main(["run", "--dataset", str(ds), "--model", "echo", "--out", str(tmp_path / "a.jsonl"), "--no-progress", *common]) == 0
        assert main(["run", "--dataset", str(ds), "--model", "terse", "--out", str(tmp_path / "b.jsonl"), "--no-progress", *common]) == 0
        capsys.readouterr()
        rc = main(["sxs", "--dataset", str(ds), "--a", str(tmp_path / "a.jsonl"), "--b", str(tmp_path / "b.jsonl"),
                   "--judge-model", "judge", "--report-dir", str(reports), "--n-boot", "200", *common])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "A win rate (ties ½)       100.0%" in out and "judging prompt autosxs@1" in out
    html = next(reports.glob("sxs-*.html")).read_text()
    assert "data:image/png;base64," in html and "--api-key REDACTED" in html and API_KEY not in html
    doc = json.loads(next(reports.glob("sxs-*.json")).read_text())
    prov = doc["provenance"]
    assert prov["models"] == ["echo", "terse"] and prov["judging_prompt"] == "autosxs@1"
    assert prov["dataset_hash"].startswith("sha256:") and prov["created_at"]
    assert doc["summary"]["wins_a"] == 8 and doc["summary"]["length_bias"]["longer_win_rate"]["value"] == 1.0


def test_cli_sxs_of_two_prompt_versions_through_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same model, prompt version 1 vs 2: answers are generated first, versions recorded per result."""
    from gateway.cli.eval import main
    from gateway.prompts import PromptRegistry, parse_spec
    from gateway.prompts.store import SQLitePromptStore
    from tests.support import API_KEY, gateway, make_settings

    async def push() -> None:
        reg = PromptRegistry(SQLitePromptStore(tmp_path / "p.db"))
        for note in ("v1", "v2"):
            await reg.push(parse_spec({"id": "greeter", "messages": [{"role": "system", "template": f"Greet warmly ({note})."}], "note": note}))
        await reg.aclose()

    asyncio.run(push())
    settings = make_settings(
        [
            {"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]},
            {"name": "judge", "targets": [{"name": "mock-judge", "provider": "mock", "model": "judge-longer"}]},
        ],
        prompts={"store": "sqlite", "sqlite_path": str(tmp_path / "p.db")},
    )
    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"hello {i}"}) + "\n" for i in range(5)))
    with gateway(settings) as (url, _app):
        rc = main(["sxs", "--dataset", str(ds), "--model-a", "echo", "--prompt", "greeter", "--prompt-version-a", "1",
                   "--prompt-version-b", "2", "--judge-model", "judge", "--report-dir", str(tmp_path / "rep"), "--n-boot", "50",
                   "--base-url", url + "/v1", "--api-key", API_KEY])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "echo@1 (A) vs echo@2 (B)" in out and "ties 5" in out  # echo answers alike: every pair a tie
    doc = json.loads(next((tmp_path / "rep").glob("sxs-*.json")).read_text())
    assert doc["provenance"]["prompt_versions"] == ["1", "2"]
    run_a = [json.loads(line) for line in Path(doc["a"]["results"]).read_text().splitlines()]
    assert {r["prompt_ref"] for r in run_a} == {"greeter@1"}


async def test_gateway_arbiter_rejected_request_is_a_counted_tie() -> None:
    with serve_fake_openai() as (url, _fake):
        client = AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        try:
            out = await run_sxs(GatewayArbiter(client, "judge-longer"), {"p": "BLOCKME"}, {"p": "a"}, {"p": "bb"}, n_boot=10)
        finally:
            await client.close()
    s = out["summary"]
    assert s["ties"] == 1 and s["parse_errors"] == 2
    assert "HTTP 400" in out["items"][0]["forward"]["parse_error"]

"""HateCheck and identity-template fixtures through the real gateway, real default scorer.

The demo policy (policies/examples/demo.yaml) blocks input whose `toxicity` or
`identity_attack` crosses its thresholds. The scorer is the shipped MiniLM head; the
fixtures are rows held out from its training (tests/fixtures/*/SOURCE.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import openai
import pytest

from tests.support import API_KEY, gateway, make_settings

FIX = Path(__file__).parent / "fixtures"
DEMO_POLICY = Path(__file__).parents[1] / "policies" / "examples" / "demo.yaml"


def rows(name: str) -> list[dict[str, str]]:
    (path,) = (FIX / name).glob("*.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def client():
    settings = make_settings(
        [{"name": "chat", "targets": [{"provider": "mock", "model": "fixed:ok"}]}],
        policies={"paths": [str(DEMO_POLICY)]}, safety={"backend": "minilm-head"},
    )
    with gateway(settings) as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)


def blocked(client: openai.OpenAI, text: str) -> bool:
    try:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}])
    except openai.BadRequestError as exc:
        assert exc.body["code"] == "content_policy_violation"
        assert exc.body["rule"] == "block-harmful-input"
        return True
    return False


def rate(client: openai.OpenAI, texts: list[str]) -> float:
    return sum(blocked(client, t) for t in texts) / len(texts)


def test_hatecheck_through_the_gateway(client):
    data = rows("hatecheck")
    hateful = [r["test_case"] for r in data if r["label_gold"] == "hateful"][:40]
    # the plain non-hateful functionalities (not counter-speech or reclaimed slurs, where
    # docs/safety.md reports a 30% false-positive rate)
    benign = [r["test_case"] for r in data if r["functionality"] in ("ident_neutral_nh", "ident_pos_nh")][:30]
    assert len(hateful) == 40 and len(benign) >= 10
    hit, false_alarm = rate(client, hateful), rate(client, benign)
    print(f"HateCheck through the gateway: blocked {hit:.0%} of hateful, {false_alarm:.0%} of neutral/positive identity mentions")
    assert hit >= 0.75
    assert false_alarm <= 0.2


def test_identity_templates_through_the_gateway(client):
    data = rows("identity")
    toxic = [r["phrase"] for r in data if r["toxicity"] == "toxic"][:40]
    benign = [r["phrase"] for r in data if r["toxicity"] == "nontoxic"][:40]
    hit, false_alarm = rate(client, toxic), rate(client, benign)
    print(f"identity templates through the gateway: blocked {hit:.0%} of toxic, {false_alarm:.0%} of benign")
    assert hit >= 0.75
    assert false_alarm <= 0.15


def test_modern_benign_questions_pass_and_a_hateful_one_does_not(client):
    """The held-out probes of the quality report, through the gateway and the demo policy:
    everyday questions that mention people or identity groups are not blocked."""
    from evaluators.safety.quality import PROBES

    benign = [text for _, text, harmful in PROBES if not harmful]
    hateful = [text for _, text, harmful in PROBES if harmful]
    assert "What are common mistakes people make with unit testing?" in benign
    assert [t for t in benign if blocked(client, t)] == []
    assert all(blocked(client, t) for t in hateful)

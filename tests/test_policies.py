"""Policy documents, loader errors, scoping, built-in checks, the engine, hot reload and the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from evaluators.pii import find_pii, luhn_valid, redact
from gateway.cli.policy import main as policy_cli
from policies import Engine, PolicyLoadError, PolicySet
from policies.reload import PolicyWatcher
from policies.schema import SCHEMA_PATH, schema_text

EXAMPLES = Path(__file__).resolve().parents[1] / "policies" / "examples"


def load(text: str, source: str = "p.yaml") -> PolicySet:
    return PolicySet.from_texts([(source, textwrap.dedent(text))])


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as exc:
        load(text)
    return [str(p) for p in exc.value.problems]


class KeywordScorer:
    """Deterministic stand-in for the safety scorer (the trained head isn't shipped yet)."""

    labels = ("toxicity", "threat")

    def __init__(self, words: tuple[str, ...] = ("idiot", "moron"), delay: float = 0.0, fail: bool = False) -> None:
        self.words = words
        self.delay = delay
        self.fail = fail
        self.calls = 0

    async def ascore(self, texts: list[str]) -> list[dict[str, float]]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        out = []
        for t in texts:
            hit = any(w in t.lower() for w in self.words)
            out.append({"toxicity": 0.97 if hit else 0.02, "threat": 0.6 if "kill" in t.lower() else 0.01})
        return out


# ---- loader errors ------------------------------------------------------------------------

BROKEN = """\
id: demo
version: 1
owner: me
rules:
  - id: r1
    direction: inptu
    checks:
      - type: safety
        thresholds: {toxcity: 0.8}
        acton: block
      - type: regx
        deny: [foo]
      - type: regex
        deny: ['(']
      - type: pii
        action: blok
  - id: r2
    chekcs: []
"""


def test_every_error_has_line_column_and_suggestion() -> None:
    got = problems(BROKEN)
    assert "p.yaml:6:16: rules[0].direction: unknown value `inptu` (did you mean `input`?)" in got
    assert "p.yaml:9:22: rules[0].checks[0].thresholds.toxcity: unknown key `toxcity` (did you mean `toxicity`?)" in got
    assert "p.yaml:10:9: rules[0].checks[0].acton: unknown key `acton` (did you mean `action`?)" in got
    assert "p.yaml:11:15: rules[0].checks[1].type: unknown check type `regx` (did you mean `regex`?)" in got
    assert any(p.startswith("p.yaml:14:16: rules[0].checks[2].deny[0]: invalid regular expression '('") for p in got)
    assert "p.yaml:16:17: rules[0].checks[3].action: unknown value `blok` (did you mean `block`?)" in got
    assert "p.yaml:18:5: rules[1].chekcs: unknown key `chekcs` (did you mean `checks`?)" in got
    assert "p.yaml:17:5: rules[1].checks: missing required key `checks`" in got
    assert len(got) == 8, got  # no cascading "too short" noise


def test_yaml_syntax_duplicate_keys_and_semantic_errors() -> None:
    got = problems("id: a\nversion: 1\nowner: [unclosed\n")
    assert len(got) == 1 and got[0].startswith("p.yaml:4:1: invalid YAML")
    got = problems(
        """\
        id: a
        version: 1
        owner: me
        owner: you
        rules:
          - id: r
            checks: [{type: safety, action: redact, thresholds: {toxicity: 0.5}}]
        """
    )
    assert "p.yaml:4:1: owner: key `owner` appears twice (remove one; YAML keeps only the last)" in got
    assert any("action `redact` needs a check that finds spans" in p and p.startswith("p.yaml:6:5:") for p in got)
    got = problems("id: a\nversion: 1\nowner: me\nrules:\n  - id: r\n    checks: [{type: recitation, threshold: 2}]\n")
    assert got == ["p.yaml:6:44: rules[0].checks[0].threshold: Input should be less than or equal to 1"]


def test_duplicate_rule_ids_across_files_are_reported() -> None:
    doc = "id: {pid}\nversion: 1\nowner: me\nrules:\n  - id: same\n    checks: [{{type: pii}}]\n"
    with pytest.raises(PolicyLoadError) as exc:
        PolicySet.from_texts([("a.yaml", doc.format(pid="a")), ("b.yaml", doc.format(pid="b"))])
    (p,) = exc.value.problems
    assert str(p).startswith("b.yaml:5:1: rules: rule id `same` is also defined at a.yaml:5")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as exc:
        PolicySet.load([tmp_path / "nope.yaml"])
    assert "no such file or directory" in str(exc.value)


def test_schema_is_current_and_accepts_examples() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), "run `gatehouse policy schema --write policies/schema.json`"
    schema = json.loads(SCHEMA_PATH.read_text())
    for f in EXAMPLES.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "x", "version": 1, "owner": "o", "rules": [], "typo": 1}, schema)


# ---- scoping ---------------------------------------------------------------------------------

SCOPED = """\
id: scoped
version: 7
owner: me
expose_verdicts: true
stream: {holdback_chars: 50, context_chars: 20}
rules:
  - id: everyone
    checks: [{type: pii}]
  - id: acme-chat-input
    tenants: [acme]
    models: ["chat-*"]
    direction: input
    checks: [{type: pii}]
  - id: batch-keys-output
    keys: ["batch-*"]
    direction: output
    stream: {holdback_chars: 10, context_chars: 5}
    checks: [{type: pii}]
  - id: disabled
    enabled: false
    checks: [{type: pii}]
"""


def test_resolve_and_explain_scope_by_tenant_key_model_direction() -> None:
    ps = load(SCOPED)
    ids = lambda rules: [r.id for r in rules]  # noqa: E731
    assert ids(ps.resolve("acme", "k1", "chat-small", "input")) == ["everyone", "acme-chat-input"]
    assert ids(ps.resolve("acme", "k1", "embed", "input")) == ["everyone"]
    assert ids(ps.resolve("globex", "k1", "chat-small", "input")) == ["everyone"]
    assert ids(ps.resolve("acme", "batch-7", "chat-small", "output")) == ["everyone", "batch-keys-output"]
    assert ids(ps.resolve("acme", None, "chat-small", "output")) == ["everyone"]
    assert ids(ps.resolve("acme", "k", "m", "input", policy="other")) == []
    explained = ps.explain("acme", "chat-x", "batch-1")
    assert ids(explained["input"]) == ["everyone", "acme-chat-input"]
    assert ids(explained["output"]) == ["everyone", "batch-keys-output"]
    rule = explained["output"][1]
    assert (rule.stream.holdback_chars, rule.stream.context_chars) == (10, 5)
    assert explained["output"][0].stream.holdback_chars == 50  # document default
    assert rule.expose_verdicts and rule.source == "p.yaml:14"
    assert rule.summary()["checks"][0]["action"] == "block"


def test_version_is_declared_plus_content_hash() -> None:
    a = load(SCOPED)
    b = load(SCOPED.replace("holdback_chars: 10", "holdback_chars: 11"))
    assert a.version.startswith("scoped@7+") and len(a.version.split("+")[1]) == 12
    assert a.version != b.version and b.version.startswith("scoped@7+")
    assert load(SCOPED).version == a.version


def test_examples_load() -> None:
    ps = PolicySet.load([EXAMPLES])
    assert {d.id for d in ps.documents} == {"demo", "acme"}
    assert [r.id for r in ps.resolve("demo", "demo-key", "demo", "input")] == [
        "block-harmful-input", "injection-in-context", "redact-pii-input", "block-secrets", "shadow-stricter-toxicity",
    ]


# ---- built-in checks -----------------------------------------------------------------------------

def test_luhn_and_card_detection() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112")
    text = "pay with 4111 1111 1111 1111 or 4111-1111-1111-1112, order 1234567890123"
    cards = [text[s.start:s.end] for s in find_pii(text, ["card"])]
    assert cards == ["4111 1111 1111 1111"]


def test_email_and_phone_detection_and_redaction() -> None:
    text = "Mail bob.smith+x@mail.example.co.uk or call +1 (415) 555-0100 / 020 7946 0958; born 1990, id 42."
    spans = find_pii(text)
    assert [(s.entity, text[s.start:s.end]) for s in spans] == [
        ("email", "bob.smith+x@mail.example.co.uk"),
        ("phone", "+1 (415) 555-0100"),
        ("phone", "020 7946 0958"),
    ]
    assert find_pii("version 3.2.1 in 2024, 10 items, call me maybe") == []
    out = redact(text, [(s.start, s.end, f"[{s.entity.upper()}]") for s in spans])
    assert out == "Mail [EMAIL] or call [PHONE] / [PHONE]; born 1990, id 42."


REGEX = """\
id: rx
version: 1
owner: me
rules:
  - id: secrets
    action: redact
    checks:
      - type: regex
        deny: ['sk-[a-z0-9]{8,}']
        allow: ['sk-test[a-z0-9]*']
"""


async def test_regex_deny_with_allow_exceptions() -> None:
    engine = Engine(load(REGEX))
    out = await engine.evaluate("input", "keys: SK-abcdef123 and sk-test12345", "t", "k", "m")
    assert out.action == "redact"
    assert out.text == "keys: [REDACTED] and sk-test12345"
    assert (await engine.evaluate("input", "only sk-test99999999", "t", "k", "m")).action == "pass"


# ---- engine -----------------------------------------------------------------------------------------

ENGINE = """\
id: eng
version: 1
owner: me
rules:
  - id: toxic
    direction: input
    checks: [{type: safety, thresholds: {toxicity: 0.8, threat: 0.5}}]
  - id: pii
    direction: input
    action: redact
    checks: [{type: pii, entities: [email]}]
  - id: flag-moron
    direction: input
    action: flag
    checks: [{type: regex, deny: [moron]}]
  - id: shadow-all
    direction: input
    action: shadow
    checks:
      - {type: regex, deny: [hello]}
      - {type: safety, thresholds: {toxicity: 0.01}, on_error: closed}
"""


async def test_engine_actions_and_precedence() -> None:
    scorer = KeywordScorer()
    engine = Engine(load(ENGINE), safety=scorer)
    out = await engine.evaluate("input", "hello, mail a@b.io", "t", "k", "m")
    assert out.action == "redact" and out.text == "hello, mail [EMAIL]"
    by_rule = {(v.rule, v.check): v for v in out.verdicts}
    assert by_rule[("shadow-all", "regex")].action == "shadow"  # evaluated, recorded, not enforced
    assert by_rule[("shadow-all", "safety")].action == "shadow"
    assert by_rule[("toxic", "safety")].action == "pass"
    assert scorer.calls == 1  # one model call shared by both rules

    out = await engine.evaluate("input", "you moron, mail a@b.io", "t", "k", "m")
    assert out.action == "block" and out.blocked_by is not None
    assert (out.blocked_by.rule, out.blocked_by.category) == ("toxic", "toxicity")
    assert out.blocked_by.score == 0.97 and out.blocked_by.detail["threshold"] == 0.8

    out = await engine.evaluate("input", "I will kill the process", "t", "k", "m")
    assert out.action == "block" and out.blocked_by.category == "threat"

    engine.safety = KeywordScorer(words=("zzz",))
    out = await engine.evaluate("input", "moron", "t", "k", "m")
    assert out.action == "flag"
    assert (await engine.evaluate("output", "moron", "t", "k", "m")).verdicts == []


async def test_shadow_only_policy_never_enforces() -> None:
    ps = load("id: s\nversion: 1\nowner: me\nrules:\n  - id: s\n    action: shadow\n    checks: [{type: regex, deny: [x]}, {type: pii}]\n")
    out = await Engine(ps).evaluate("input", "x a@b.io", "t", "k", "m")
    assert out.action == "pass" and out.text == "x a@b.io"
    assert [v.action for v in out.verdicts] == ["shadow", "shadow"]


TIMEOUTS = """\
id: to
version: 1
owner: me
rules:
  - id: open
    checks: [{type: safety, thresholds: {toxicity: 0.5}, timeout_ms: 30, on_error: open}]
  - id: closed
    checks: [{type: safety, thresholds: {toxicity: 0.5}, timeout_ms: 30, on_error: closed}]
"""


async def test_timeouts_and_errors_follow_on_error() -> None:
    open_only = load(TIMEOUTS.split("  - id: closed")[0])
    engine = Engine(open_only, safety=KeywordScorer(delay=0.5))
    out = await engine.evaluate("input", "hello", "t", "k", "m")
    (v,) = out.verdicts
    assert out.action == "pass" and (v.category, v.action, v.detail["error"]) == ("error", "pass", "timeout")
    assert v.latency_ms < 400

    engine = Engine(load(TIMEOUTS), safety=KeywordScorer(delay=0.5))
    out = await engine.evaluate("input", "hello", "t", "k", "m")
    assert out.action == "block" and out.blocked_by.rule == "closed" and out.blocked_by.category == "error"

    engine = Engine(load(TIMEOUTS), safety=KeywordScorer(fail=True))
    out = await engine.evaluate("input", "hello", "t", "k", "m")
    assert out.action == "block"
    assert {v.detail["error"] for v in out.verdicts} == {"RuntimeError: model exploded"}

    engine = Engine(load(TIMEOUTS), safety=None)  # no model loaded at all
    out = await engine.evaluate("input", "hello", "t", "k", "m")
    assert out.action == "block" and "CheckUnavailable" in out.blocked_by.detail["error"]


# ---- hot reload --------------------------------------------------------------------------------------

GOOD = "id: live\nversion: {v}\nowner: me\nrules:\n  - id: r\n    checks: [{{type: pii}}]\n"


async def test_broken_file_keeps_last_good_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(v=1))
    results: list[str] = []
    applied: list[str] = []
    w = PolicyWatcher([tmp_path], on_result=results.append, on_change=lambda ps: applied.append(ps.version), poll_seconds=0.02)
    await w.start()
    try:
        v1 = w.policies.version
        assert v1.startswith("live@1+")
        f.write_text(GOOD.format(v=1).replace("pii", "pi"))
        with caplog.at_level(logging.ERROR, logger="gatehouse.policies"):
            await _until(lambda: results == ["error"])
        assert w.policies.version == v1
        assert "p.yaml:6:21" in caplog.text and "did you mean `pii`" in caplog.text
        f.write_text(GOOD.format(v=2))
        await _until(lambda: results == ["error", "success"])
        assert w.policies.version.startswith("live@2+") and applied == [w.policies.version]
        assert await w.reload("manual") == "unchanged"
    finally:
        await w.aclose()


async def test_pubsub_reload_converges_replicas(tmp_path: Path) -> None:
    import redis.asyncio as aioredis

    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(v=1))
    channel = f"gatehouse-test:{uuid.uuid4().hex}:policies:reload"
    r1, r2 = aioredis.from_url("redis://127.0.0.1:6379/0"), aioredis.from_url("redis://127.0.0.1:6379/0")
    # no polling: the only way replica b learns about the change is the announcement
    a = PolicyWatcher([f], redis=r1, channel=channel, replica_id="a")
    b_results: list[str] = []
    b = PolicyWatcher([f], redis=r2, channel=channel, replica_id="b", on_result=b_results.append)
    try:
        await a.start(poll=False)
        await b.start(poll=False)
        async with asyncio.timeout(5):
            await a.wait_subscribed()
            await b.wait_subscribed()
        f.write_text(GOOD.format(v=2))
        assert await a.reload("sighup") == "success"
        await _until(lambda: b.policies.version == a.policies.version)
        assert b.policies.version.startswith("live@2+") and b_results == ["success"]
    finally:
        await a.aclose()
        await b.aclose()
        await r1.aclose()
        await r2.aclose()


async def test_sighup_request_reload(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(v=1))
    w = PolicyWatcher([f], poll_seconds=60)
    await w.start()
    try:
        w.install_sighup()  # may be False off the main thread; request_reload is what it calls
        f.write_text(GOOD.format(v=3))
        w.request_reload("sighup")
        await _until(lambda: w.policies.version.startswith("live@3+"))
    finally:
        await w.aclose()


async def _until(cond, limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ---- CLI -------------------------------------------------------------------------------------------------

def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    assert policy_cli(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:11:15: rules[0].checks[1].type: unknown check type `regx` (did you mean `regex`?)" in err
    assert "8 problem(s)" in err
    assert policy_cli(["check", str(EXAMPLES)]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 policies, 8 rules, version demo@1,acme@2024.1+")


def test_cli_explain_schema_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_cli(["explain", "--tenant", "acme", "--model", "demo", "--key", "batch-1", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "acme-cards-fail-closed" in out and "acme-no-competitors" in out and "redact-pii-input" in out
    assert policy_cli(["explain", "--json", "--tenant", "other", "--model", "demo", str(EXAMPLES)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["rule"] for r in data["output"]] == ["block-secrets", "output-safety", "shadow-stricter-toxicity"]
    assert policy_cli(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Gatehouse policy document"
    args = ["dry-run", str(EXAMPLES / "demo.yaml"), "--tenant", "demo", "--model", "demo", "--json"]
    assert policy_cli([*args, "--text", "write to jo@example.com"]) == 0
    data = json.loads(capsys.readouterr().out)
    # no --config, so no safety model: the demo's safety rule fails closed and says why
    verdicts = {v["rule"]: v for v in data["verdicts"]}
    assert data["action"] == "block" and verdicts["block-harmful-input"]["category"] == "error"
    assert verdicts["redact-pii-input"]["action"] == "redact"
    assert policy_cli([*args, "--direction", "output", "--text", "key sk-abcdefghijklmnopqrstuvwx"]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "block"


def test_cli_check_refuses_a_category_no_configured_scorer_produces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.policy import main
    from policies.coverage import uncovered

    f = tmp_path / "jb.yaml"
    f.write_text("""\
id: jb
version: 1
owner: me
rules:
  - id: block-harms
    direction: input
    checks:
      - type: safety
        thresholds: {threat: 0.5, toxicity: 0.8}
      - type: llama_guard
        route: guard
        categories: [violence, jailbreak]
""")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("safety: {backend: minilm-head}\n")
    assert main(["check", "--config", str(cfg), str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:5: rule block-harms, checks[0] (safety): no configured scorer produces `threat`" in err
    assert "produced by: safety.backend categories, safety.backend detoxify, a `moderation` check" in err  # the scorers that would
    assert "checks[1] (llama_guard): no configured scorer produces `jailbreak`" in err and "2 problem(s)" in err
    # a scorer that produces both passes
    policies = PolicySet.load([f])
    left = uncovered(policies, ("full", frozenset({"threat", "toxicity"})))
    assert [(u.check_type, u.category) for u in left] == [("llama_guard", "jailbreak")]

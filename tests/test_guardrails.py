"""The guardrail stage: input/output enforcement, the stream hold-back filter, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evaluators.recitation import RecitationIndex
from gateway.errors import GatewayError
from gateway.guardrails import GuardrailMetrics, GuardrailStage, build_stage
from gateway.metrics import Metrics
from gateway.model import Chunk, Reply
from gateway.protocols.chat import chunk_in, chunk_out, reply_in, reply_out, request_out
from gateway.types import Caller, RequestContext, StreamBlocked, TrafficRecord
from policies import Engine, PolicySet
from tests.support import API_KEY, gateway, make_settings, target
from tests.test_policies import KeywordScorer

MOBY = (
    "Call me Ishmael. Some years ago never mind how long precisely having little or no money in my "
    "purse and nothing particular to interest me on shore I thought I would sail about a little and "
    "see the watery part of the world. It is a way I have of driving off the spleen and regulating "
    "the circulation. Whenever I find myself growing grim about the mouth whenever it is a damp "
    "drizzly November in my soul."
)
RECITED = (
    "Some years ago never mind how long precisely having little or no money in my purse and nothing "
    "particular to interest me on shore I thought I would sail about a little"
)

POLICY = """\
id: t
version: 1
owner: tests
expose_verdicts: true
stream: {holdback_chars: 40, context_chars: 200}
rules:
  - id: block-toxic
    checks: [{type: safety, thresholds: {toxicity: 0.8}}]
  - id: redact-pii-input
    direction: input
    action: redact
    checks: [{type: pii}]
  - id: block-recitation
    direction: output
    checks: [{type: recitation, threshold: 0.5}]
  - id: shadow-globex
    action: shadow
    checks: [{type: regex, deny: [globex]}]
  - id: flag-initech
    direction: output
    action: flag
    checks: [{type: regex, deny: [initech]}]
"""


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recitation")
    (root / "corpus").mkdir()
    (root / "corpus" / "moby.txt").write_text(MOBY)
    RecitationIndex.build(root / "corpus", progress=False).save(root / "index")
    return root / "index"


@pytest.fixture
async def stage(index_dir: Path) -> Any:
    index = RecitationIndex.load(index_dir)
    engine = Engine(PolicySet.from_texts([("t.yaml", POLICY)]), safety=KeywordScorer(), recitation=index)
    st = GuardrailStage(engine)
    yield st
    await st.aclose()


def make_ctx(body: dict[str, Any], endpoint: str = "chat") -> RequestContext:
    rec = TrafficRecord(request_id="r1", ts_start=0.0, endpoint=endpoint)
    return RequestContext("r1", endpoint, Caller("acme", "k1"), body, {}, rec)  # type: ignore[arg-type]


def chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": "be nice, idiot"}, {"role": "user", "content": text}], **kw}


# ---- input ------------------------------------------------------------------------------------

async def test_input_block_raises_content_policy_with_rule(stage: GuardrailStage) -> None:
    ctx = make_ctx(chat("you absolute idiot"))
    with pytest.raises(GatewayError) as exc:
        await stage.on_request(ctx)
    body = exc.value.body()["error"]
    assert exc.value.status == 400 and body["code"] == "content_policy_violation"
    assert (body["rule"], body["category"], body["param"]) == ("block-toxic", "toxicity", "messages")
    assert exc.value.headers["x-gatehouse-policy"] == stage.policies.version
    assert ctx.record.policy_version == stage.policies.version
    assert any(v.rule == "block-toxic" and v.action == "block" for v in ctx.record.verdicts)


async def test_input_redaction_rewrites_only_user_text(stage: GuardrailStage) -> None:
    body = chat("")
    body["messages"][1]["content"] = [{"type": "text", "text": "card 4111 1111 1111 1111, globex"}]
    ctx = make_ctx(body)
    await stage.on_request(ctx)
    assert ctx.request is not None
    body = request_out(ctx.request)  # what goes upstream
    assert body["messages"][1]["content"][0]["text"] == "card [CARD], globex"
    assert body["messages"][0]["content"] == "be nice, idiot"  # the system prompt is the app's, not checked
    fired = {(v.rule, v.action) for v in ctx.record.verdicts if v.action != "pass"}
    assert fired == {("redact-pii-input", "redact"), ("shadow-globex", "shadow")}
    header = json.loads(ctx.response_headers["x-gatehouse-verdicts"])
    assert {"r": "shadow-globex", "c": "regex", "cat": "globex", "a": "shadow", "s": 1.0, "d": "i"} in header

    ctx = make_ctx({"model": "m", "prompt": ["mail x@y.org", "fine"]}, endpoint="completions")
    await stage.on_request(ctx)
    assert ctx.body["prompt"] == ["mail [EMAIL]", "fine"]


async def test_unknown_assigned_policy_fails_closed(stage: GuardrailStage) -> None:
    ctx = make_ctx(chat("hi"))
    ctx.caller.policy = "missing"
    with pytest.raises(GatewayError) as exc:
        await stage.on_request(ctx)
    assert exc.value.status == 503


# ---- whole replies ---------------------------------------------------------------------------------

def reply(text: str) -> Reply:
    return reply_in({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


async def test_output_block_becomes_content_filter(stage: GuardrailStage) -> None:
    ctx = make_ctx(chat("quote it"))
    out = reply_out(await stage.on_response(ctx, reply(f"Sure: {RECITED}")))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] == ""
    assert choice["content_filter_results"]["recitation"] == {
        "filtered": True, "rule": "block-recitation", "check": "recitation", "source": "moby.txt"}
    ctx = make_ctx(chat("hi"))
    out = reply_out(await stage.on_response(ctx, reply("initech makes printers")))
    assert out["choices"][0]["finish_reason"] == "stop"
    assert [v.rule for v in ctx.record.verdicts if v.action == "flag"] == ["flag-initech"]


# ---- streams ---------------------------------------------------------------------------------------

def chunk(text: str | None) -> Chunk:
    delta = {} if text is None else {"content": text}
    return chunk_in({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


async def run_stream(stage: GuardrailStage, pieces: list[str]) -> tuple[str, StreamBlocked | None, RequestContext]:
    ctx = make_ctx(chat("go", stream=True))
    await stage.on_request(ctx)
    f = stage.stream_filter(ctx)
    assert f is not None
    released: list[Chunk] = []
    blocked = None
    try:
        released += await f.feed(chunk(None))  # the role chunk passes straight through
        assert len(released) == 1
        for p in pieces:
            released += await f.feed(chunk(p))
        released += await f.finish()
    except StreamBlocked as exc:
        blocked = exc
    return "".join(chunk_out(c)["choices"][0]["delta"].get("content", "") for c in released), blocked, ctx


async def test_holdback_releases_clean_text_in_order(stage: GuardrailStage) -> None:
    pieces = [f"word{i} " for i in range(30)]
    text, blocked, _ = await run_stream(stage, pieces)
    assert blocked is None and text == "".join(pieces)


async def test_holdback_blocks_toxic_phrase_split_across_chunks_and_windows(stage: GuardrailStage) -> None:
    # 36 chars of clean text, then "idiot" split over two chunks; the 40-char window boundary
    # falls inside the word, so only the carried context lets the next window see it whole
    pieces = ["The weather today is quite nice. ", "You idi", "ot, really."]
    text, blocked, ctx = await run_stream(stage, pieces)
    assert blocked is not None and (blocked.rule, blocked.category) == ("block-toxic", "toxicity")
    assert "idiot" not in text and text == "The weather today is quite nice. You idi"
    (v,) = [v for v in ctx.record.verdicts if v.action == "block"]
    assert v.direction == "output" and v.detail["window"] == [0, 51]


async def test_holdback_without_context_misses_a_split_phrase(index_dir: Path) -> None:
    policy = POLICY.replace("context_chars: 200", "context_chars: 0")
    engine = Engine(PolicySet.from_texts([("t.yaml", policy)]), safety=KeywordScorer())
    _, blocked, _ = await run_stream(GuardrailStage(engine), ["The weather today is quite nice. ", "You idi", "ot, really."])
    assert blocked is None  # why context_chars exists


async def test_holdback_blocks_recited_passage_naming_source(stage: GuardrailStage) -> None:
    intro = "Here is a lovely opening line from an old book I like a lot. "
    words = RECITED.split(" ")
    pieces = [intro] + [w + " " for w in words] + ["and so on."]
    text, blocked, ctx = await run_stream(stage, pieces)
    assert blocked is not None and blocked.rule == "block-recitation"
    assert blocked.detail == {"source": "moby.txt"} and "moby.txt" in blocked.message
    assert text.startswith(intro) and len(text) < len(intro) + len(RECITED)
    (v,) = [v for v in ctx.record.verdicts if v.rule == "block-recitation"]
    assert v.detail["source"] == "moby.txt" and v.detail["score"] >= 0.5


async def test_holdback_redacts_pii_in_stream(index_dir: Path) -> None:
    policy = POLICY.replace("direction: input\n    action: redact", "direction: output\n    action: redact")
    engine = Engine(PolicySet.from_texts([("t.yaml", policy)]), safety=KeywordScorer())
    text, blocked, _ = await run_stream(GuardrailStage(engine), ["Write to jo", "@example.com", " today please, ok? " * 3])
    assert blocked is None and text == "Write to [EMAIL]" + " today please, ok? " * 3


# ---- build_stage -------------------------------------------------------------------------------------

class FakeServices:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.redis = None

    def embedder(self) -> Any:  # pragma: no cover - safety backend none in these tests
        raise AssertionError("not used")


async def test_build_stage_metrics_and_reload(tmp_path: Path, index_dir: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    settings = make_settings([], policies={"paths": [str(f)], "poll_seconds": 0.05}, recitation={"index": str(index_dir)},
                             safety={"backend": "none"})
    services = FakeServices(settings)
    assert await build_stage(FakeServices(make_settings([]))) is None
    st = await build_stage(services)
    assert st is not None and st.engine.recitation is not None and st.engine.safety is None
    try:
        ctx = make_ctx(chat("hello globex"))
        await st.on_request(ctx)
        out = reply_out(await st.on_response(ctx, reply(RECITED)))
        assert out["choices"][0]["finish_reason"] == "content_filter"
        f.write_text(POLICY.replace("version: 1", "version: 2"))
        import asyncio

        for _ in range(200):
            if st.policies.version.startswith("t@2+"):
                break
            await asyncio.sleep(0.02)
        assert st.policies.version.startswith("t@2+")
        text = services.metrics.render()[0].decode()
        assert 'gatehouse_guardrail_checks_total{action="shadow",check="regex"} 1.0' in text
        assert 'gatehouse_guardrail_checks_total{action="error",check="safety"} 2.0' in text
        assert 'gatehouse_policy_reloads_total{result="success"} 1.0' in text
        assert "gatehouse_guardrail_latency_seconds_bucket" in text
    finally:
        await st.aclose()


async def test_a_safety_scorer_that_cannot_load_stops_startup(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    settings = make_settings([], policies={"paths": [str(f)], "reload": False},
                             safety={"backend": "categories", "artifact_dir": str(tmp_path / "no-such-artifact")})
    from evaluators.embedding import shared_embedder

    services = FakeServices(settings)
    services.embedder = shared_embedder  # type: ignore[method-assign]
    with pytest.raises(FileNotFoundError, match="train_safety_categories"):
        await build_stage(services)


def test_metrics_helper_without_registry() -> None:
    GuardrailMetrics.register(None).checks.labels("x", "y").inc()


# ---- end to end through the real gateway --------------------------------------------------------------

E2E_POLICY = """\
id: e2e
version: 1
owner: tests
expose_verdicts: true
stream: {holdback_chars: 40, context_chars: 200}
rules:
  - id: block-toxic-input
    direction: input
    checks: [{type: safety, thresholds: {toxicity: 0.8}}]
  - id: block-recitation
    direction: output
    checks: [{type: recitation, threshold: 0.5}]
  - id: shadow-globex
    action: shadow
    checks: [{type: regex, deny: [globex]}]
"""


@pytest.fixture
def e2e(tmp_path: Path, index_dir: Path, fake_upstream: tuple[str, Any]) -> Any:
    up_url, _ = fake_upstream
    f = tmp_path / "e2e.yaml"
    f.write_text(E2E_POLICY)
    settings = make_settings(
        [{"name": "chat", "targets": [target(up_url, "echo")]}],
        policies={"paths": [str(f)], "reload": False},
        recitation={"index": str(index_dir)},
    )
    with gateway(settings) as (url, app):
        (st,) = [s for s in app.runtime.stages if getattr(s, "name", "") == "guardrails"]
        st.engine.safety = KeywordScorer()  # safety.backend is none in tests: stand-in scorer
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        yield client, st


def test_e2e_toxic_input_blocked(e2e: Any) -> None:
    client, st = e2e
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "you idiot"}])
    err = exc.value
    assert err.code == "content_policy_violation"
    body = err.body if isinstance(err.body, dict) else {}
    body = body.get("error", body)
    assert body["rule"] == "block-toxic-input" and body["category"] == "toxicity"
    assert err.response.headers["x-gatehouse-policy"] == st.policies.version


def test_e2e_stream_recitation_cut_off(e2e: Any) -> None:
    client, _ = e2e
    prompt = f"Here is a lovely opening line from an old book I like a lot. {RECITED} and so on."
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": prompt}], stream=True)
    text, finish = "", None
    with pytest.raises(openai.APIError) as exc, stream:
        for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
    assert finish == "content_filter"
    assert "moby.txt" in str(exc.value) and "block-recitation" in str(exc.value)
    assert text.startswith("Here is a lovely") and RECITED not in text


def test_e2e_recitation_non_stream_and_shadow_only_logs(e2e: Any) -> None:
    client, _ = e2e
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "tell me about globex corporation"}])
    resp = raw.parse()
    assert resp.choices[0].message.content == "tell me about globex corporation"
    assert resp.choices[0].finish_reason == "stop"
    verdicts = json.loads(raw.headers["x-gatehouse-verdicts"])
    assert {"r": "shadow-globex", "a": "shadow", "d": "i"}.items() <= verdicts[0].items() or any(
        v["r"] == "shadow-globex" and v["a"] == "shadow" for v in verdicts)
    resp = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": RECITED}])
    assert resp.choices[0].finish_reason == "content_filter" and resp.choices[0].message.content == ""


def test_e2e_metrics_exposed(e2e: Any) -> None:
    client, _ = e2e
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    base = str(client.base_url).removesuffix("/v1/")
    text = httpx.get(base + "/metrics").text
    assert "gatehouse_guardrail_checks_total" in text




# ---- the real safety scorer (once its trained head is shipped) ------------------------------------------

HEAD = Path(__file__).resolve().parents[1] / "evaluators" / "safety" / "artifacts" / "minilm_head.npz"


@pytest.mark.slow
@pytest.mark.skipif(not HEAD.exists(), reason="safety head artifact not trained yet")
async def test_real_safety_scorer_in_the_holdback_filter() -> None:
    from evaluators.safety import load_scorer
    from gateway.config import SafetySettings

    batches: list[int] = []
    scorer = load_scorer(SafetySettings(), ".", on_batch=batches.append)
    assert scorer is not None
    policy = POLICY.replace("thresholds: {toxicity: 0.8}", "thresholds: {toxicity: 0.5}, timeout_ms: 30000")
    engine = Engine(PolicySet.from_texts([("t.yaml", policy)]), safety=scorer)
    st = GuardrailStage(engine)
    try:
        _, blocked, _ = await run_stream(st, ["Thanks for asking, the ", "weather is lovely today ", "and the park is green."])
        assert blocked is None
        _, blocked, _ = await run_stream(st, ["You are a worthless, stupid ", "idiot and I ", "hate you, moron."])
        assert blocked is not None and blocked.category == "toxicity"
        assert batches
    finally:
        await st.aclose()


def test_a_threshold_the_scorer_cannot_produce_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from gateway.guardrails import _warn_unscored

    policies = PolicySet.from_texts([("p.yaml", """\
id: p
version: 1
owner: tests
rules:
  - id: block-toxic
    checks: [{type: safety, thresholds: {toxicity: 0.8, threat: 0.7}}]
""")])
    with caplog.at_level("WARNING", logger="gatehouse.guardrails"):
        _warn_unscored(policies, SimpleNamespace(name="minilm-head@x", labels=("toxicity", "identity_attack")))
        _warn_unscored(policies, SimpleNamespace(name="full", labels=("toxicity", "threat")))
    assert "rule block-toxic, checks[0] (safety): no configured scorer produces `threat`" in caplog.text
    assert caplog.text.count("never fire") == 1

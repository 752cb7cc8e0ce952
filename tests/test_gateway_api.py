"""The drop-in API: the official OpenAI client against a real gateway and a real upstream."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

from tests.support import API_KEY, FakeUpstream, gateway, make_settings, serve_app, target


@pytest.fixture(scope="module")
def stack():
    up = FakeUpstream()
    with serve_app(up) as usrv:
        u = usrv.url
        settings = make_settings(
            [
                {"name": "chat", "targets": [target(u, "echo", name="up-echo")]},
                {"name": "ab", "targets": [target(u, "echo", name="arm-a", weight=50, variant="A"), target(u, "echo", name="arm-b", weight=50, variant="B")]},
                {"name": "embed", "targets": [{"name": "mock-embed", "provider": "mock", "model": "echo"}]},
                {"name": "fixed", "targets": [target(u, "fixed:ten four", name="up-fixed")], "owner": "team-x"},
            ],
            server={"max_body_bytes": 4096},
        )
        with gateway(settings) as (url, app):
            yield url, up, app


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)


def test_chat_non_streaming_sync(stack):
    url, up, _ = stack
    raw = client(url).chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "hello gateway"}])
    resp = raw.parse()
    assert resp.choices[0].message.content == "hello gateway"
    assert resp.usage.total_tokens > 0
    assert raw.headers["x-gatehouse-target"] == "up-echo"
    assert raw.headers["x-request-id"].startswith("req_")
    # the upstream got its own model name and key, not the public ones
    assert up.requests[-1]["model"] == "echo"


async def test_chat_async_and_concurrent(stack):
    url, _, _ = stack
    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
    texts = [f"message {i}" for i in range(16)]
    replies = await asyncio.gather(*(c.chat.completions.create(model="chat", messages=[{"role": "user", "content": t}]) for t in texts))
    assert [r.choices[0].message.content for r in replies] == texts
    await c.close()


def test_chat_streaming_with_usage(stack):
    url, _, _ = stack
    chunks = list(client(url).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four"}], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


def test_streaming_without_include_usage_hides_usage_chunk(stack):
    url, up, _ = stack
    chunks = list(client(url).chat.completions.create(model="chat", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert all(c.usage is None for c in chunks)
    # but the gateway asked the upstream for usage, for the traffic record
    assert up.requests[-1]["stream_options"] == {"include_usage": True}


def test_completions_and_embeddings(stack):
    url, _, _ = stack
    c = client(url)
    comp = c.completions.create(model="chat", prompt="complete me")
    assert comp.choices[0].text == "complete me"
    emb = c.embeddings.create(model="embed", input=["a", "b", "c"])
    assert len(emb.data) == 3 and len(emb.data[0].embedding) == 16
    b64 = c.embeddings.create(model="embed", input="a", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert decoded.tolist() == pytest.approx(emb.data[0].embedding, abs=1e-6)


def test_model_garden(stack):
    url, _, _ = stack
    c = client(url)
    ids = [m.id for m in c.models.list()]
    assert ids == sorted(["chat", "ab", "embed", "fixed"])
    m = c.models.retrieve("fixed")
    assert m.owned_by == "team-x"
    card = httpx.get(url + "/v1/models/ab", headers={"authorization": f"Bearer {API_KEY}"}).json()
    assert {t["variant"] for t in card["gatehouse"]["targets"]} == {"A", "B"}
    assert "streaming" in card["gatehouse"]["capabilities"]


def test_sticky_ab_assignment(stack):
    url, _, _ = stack
    c = client(url)

    def variant(user: str) -> str:
        raw = c.chat.completions.with_raw_response.create(model="ab", messages=[{"role": "user", "content": "x"}], user=user)
        return raw.headers["x-gatehouse-variant"]

    for user in ("alice", "bob", "carol"):
        assert len({variant(user) for _ in range(5)}) == 1
    assert {variant(f"user-{i}") for i in range(40)} == {"A", "B"}
    # the session header wins over `user`
    h = {"x-gatehouse-session": "s-1"}
    got = {c.chat.completions.with_raw_response.create(model="ab", messages=[{"role": "user", "content": "x"}], user=f"u{i}", extra_headers=h).headers["x-gatehouse-variant"] for i in range(6)}
    assert len(got) == 1


def post(url: str, path: str, content: bytes | str, key: str | None = API_KEY) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(url + path, content=content, headers=headers)


def test_bad_input_gets_openai_errors(stack):
    url, _, _ = stack
    r = post(url, "/v1/chat/completions", b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = post(url, "/v1/chat/completions", '{"model": "chat", "messages": "hi"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post(url, "/v1/chat/completions", '{"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = post(url, "/v1/chat/completions", '{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = post(url, "/v1/chat/completions", '[1, 2]')
    assert r.status_code == 400
    r = post(url, "/v1/chat/completions", '{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}')
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and "chat" in err["message"] and "embed" in err["message"]
    big = '{"model": "chat", "messages": [{"role": "user", "content": "' + "x" * 5000 + '"}]}'
    r = post(url, "/v1/chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert post(url, "/v1/chat/completions", '{"model": "chat"}', key=None).status_code == 401
    r = post(url, "/v1/chat/completions", '{"model": "chat"}', key="sk-wrong-key-123")
    assert r.status_code == 401 and "sk-wro..." in r.json()["error"]["message"] and "123" not in r.json()["error"]["message"]
    r = httpx.get(url + "/v1/nothing", headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_open_and_closed_paths(stack):
    url, _, _ = stack
    assert httpx.get(url + "/healthz").status_code == 200
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["started"] is True
    assert httpx.get(url + "/metrics").status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.post(url + "/admin/reload").status_code in (401, 403)


def test_metrics_exported(stack):
    url, _, _ = stack
    client(url).chat.completions.create(model="chat", messages=[{"role": "user", "content": "count me"}])
    text = httpx.get(url + "/metrics").text
    for name in ("gatehouse_requests_total", "gatehouse_request_duration_seconds", "gatehouse_overhead_seconds",
                 "gatehouse_tokens_total", "gatehouse_inflight_requests", "gatehouse_circuit_open", "gatehouse_log_records_dropped_total"):
        assert name in text, name
    assert 'gatehouse_requests_total{model="chat",status="200",target="up-echo"}' in text


async def test_reload_rebuilds_a_provider_whose_api_key_changed():
    """Secrets are masked in a target's JSON; a rotated key must still give a new provider."""

    def settings(key: str):
        return make_settings([{"name": "m", "targets": [{"name": "up", "provider": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                         "model": "x", "api_key": key}]}])

    with gateway(settings("sk-old")) as (_, app):
        rt = app.runtime
        (first,) = rt._providers.values()
        await rt.build_router(settings("sk-old"))
        assert list(rt._providers.values()) == [first]  # unchanged target: kept
        await rt.build_router(settings("sk-new"))
        (second,) = rt._providers.values()
        assert second is not first and second.target.api_key.get_secret_value() == "sk-new"
        assert rt._retired == [first]  # out of /readyz, closed at shutdown


def test_a_token_limited_request_reaches_the_model_intact():
    """With a tokens-per-minute limit, admission parses the body once and the handler reuses it."""
    settings = make_settings([{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}],
                             rate_limits={"tokens_per_minute": 100_000})
    with gateway(settings) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "echo this back"}])
        assert r.choices[0].message.content == "echo this back"
        bad = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {API_KEY}"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]

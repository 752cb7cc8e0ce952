"""Fault handling on real loopback servers: timeouts, retries, fallbacks, drops, breakers."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.support import API_KEY, gateway, make_settings, target


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)


MSG = [{"role": "user", "content": "are you there"}]
FAST_RETRY = {"attempts": 2, "backoff_base": 0.001, "backoff_max": 0.01}


def test_slow_upstream_times_out_then_falls_back(fake_upstream):
    u, up = fake_upstream
    settings = make_settings([{
        "name": "m",
        "targets": [target(u, "slow:3000", name="slow", timeouts={"total": 0.2, "first_token": 0.2})],
        "fallbacks": [target(u, "echo", name="backup")],
        "retries": FAST_RETRY,
    }])
    with gateway(settings) as (url, _):
        raw = client(url).chat.completions.with_raw_response.create(model="m", messages=MSG)
        assert raw.headers["x-gatehouse-target"] == "backup"
        assert raw.parse().choices[0].message.content == "are you there"
        # a timed-out target is not retried: slow targets stay slow
        assert up.calls["slow:3000"] == 1
        # streaming: the first-token timeout applies, then the fallback streams
        chunks = list(client(url).chat.completions.create(model="m", messages=MSG, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "are you there"


def test_timeout_without_fallback_is_504(fake_upstream):
    u, _ = fake_upstream
    settings = make_settings([{"name": "m", "targets": [target(u, "slow:3000", timeouts={"total": 0.2})]}])
    with gateway(settings) as (url, _):
        with pytest.raises(openai.APIStatusError) as ei:
            client(url).chat.completions.create(model="m", messages=MSG)
        assert ei.value.status_code == 504
        assert ei.value.body["code"] == "upstream_timeout"


def test_503_is_retried_then_succeeds(fake_upstream):
    u, up = fake_upstream
    settings = make_settings([{"name": "m", "targets": [target(u, "flaky:503:2")], "retries": FAST_RETRY}])
    with gateway(settings) as (url, _):
        r = client(url).chat.completions.create(model="m", messages=MSG)
        assert r.choices[0].message.content == "are you there"
        assert up.calls["flaky:503:2"] == 3


def test_429_retry_after_honoured_then_fallback(fake_upstream):
    u, up = fake_upstream
    settings = make_settings([{
        "name": "m", "targets": [target(u, "error:429", name="limited")], "fallbacks": [target(u, "echo", name="backup")],
        "retries": {"attempts": 1, "backoff_base": 5, "backoff_max": 5},
    }])
    with gateway(settings) as (url, _):
        raw = client(url).chat.completions.with_raw_response.create(model="m", messages=MSG)
        # Retry-After: 0 from the upstream overrides the 5 s backoff, so this is quick
        assert raw.headers["x-gatehouse-target"] == "backup"
        assert up.calls["error:429"] == 2


def test_connect_failure_is_502_and_upstream_4xx_passes_through(fake_upstream):
    u, _ = fake_upstream
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connection refused
        settings = make_settings([
            {"name": "dead", "targets": [target(dead, "echo")], "retries": FAST_RETRY},
            {"name": "picky", "targets": [target(u, "bad-request")]},
        ])
        with gateway(settings) as (url, _):
            with pytest.raises(openai.APIStatusError) as ei:
                client(url).chat.completions.create(model="dead", messages=MSG)
            assert ei.value.status_code == 502 and ei.value.body["code"] == "upstream_connect_error"
            with pytest.raises(openai.BadRequestError) as bi:
                client(url).chat.completions.create(model="picky", messages=MSG)
            assert "temperature too spicy" in bi.value.message
            assert bi.value.body["param"] == "temperature" and bi.value.body["code"] == "bad_temp"


def test_upstream_drop_mid_stream_ends_with_sse_error(fake_upstream):
    u, _ = fake_upstream
    settings = make_settings([{"name": "m", "targets": [target(u, "stream-then-drop")]}])
    with gateway(settings) as (url, _):
        got = []
        # the client and the stream are closed explicitly: a response left open when the
        # stream raises would otherwise be closed by the garbage collector, with a warning
        with client(url) as c, pytest.raises(openai.APIError) as ei, c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "one two three four five six"}], stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices:
                    got.append(chunk.choices[0].delta.content or "")
        assert "upstream stream broke" in str(ei.value)
        assert "".join(got) == "one two three"


def test_client_disconnect_cancels_upstream(fake_upstream):
    u, up = fake_upstream
    settings = make_settings([{"name": "m", "targets": [target(u, "hang-stream")]}])
    with gateway(settings) as (url, _):
        with httpx.Client(timeout=10) as hc, hc.stream(
            "POST", url + "/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
            json={"model": "m", "messages": MSG, "stream": True},
        ) as resp:
            first = next(resp.iter_lines())
            assert first.startswith("data: ")
        # leaving the block closed our connection; the gateway must close its upstream request
        assert up.disconnected.wait(10), "upstream request was not cancelled"


def test_circuit_breaker_opens_and_recovers(fake_upstream):
    u, up = fake_upstream
    settings = make_settings([{
        "name": "m", "targets": [target(u, "flaky:503:2", name="fragile", circuit={"failures": 2, "reset_seconds": 30})],
        "retries": {"attempts": 0},
    }])
    with gateway(settings) as (url, app):
        breaker = app.runtime._breakers["fragile"]
        now = [1000.0]
        breaker.clock = lambda: now[0]
        c = client(url)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError):
                c.chat.completions.create(model="m", messages=MSG)
        assert breaker.state == "open"
        metrics = httpx.get(url + "/metrics").text
        assert 'gatehouse_circuit_open{target="fragile"} 1.0' in metrics
        with pytest.raises(openai.APIStatusError) as ei:
            c.chat.completions.create(model="m", messages=MSG)
        assert ei.value.status_code == 503 and ei.value.body["code"] == "circuit_open"
        assert up.calls["flaky:503:2"] == 2  # the open breaker kept the request off the target
        now[0] += 31  # half-open: one probe goes through, succeeds, and closes the breaker
        assert c.chat.completions.create(model="m", messages=MSG).choices[0].message.content == "are you there"
        assert breaker.state == "closed"
        assert 'gatehouse_circuit_open{target="fragile"} 0.0' in httpx.get(url + "/metrics").text

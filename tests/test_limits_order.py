"""limits.check_request checks the cheap caps (model name, counts, input lengths) before the depth
walk, and the Messages door's turns are counted before the body is translated (#17: a
10,000-message request was walked, or translated, before its count refused it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import limits
from gateway.asgi import LARGE_BODY
from gateway.config import LimitSettings
from gateway.errors import GatewayError

CAPS = LimitSettings(max_messages=8, max_inputs=4, max_json_depth=8)


def deep(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    real = limits.deepest

    def spy(value: Any, limit: int) -> str | None:
        seen.append(value)
        return real(value, limit)

    monkeypatch.setattr(limits, "deepest", spy)
    return seen


@pytest.mark.parametrize("endpoint", ["chat", "messages"])
def test_too_many_messages_is_refused_before_the_body_is_walked(endpoint: str, walks: list[Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": deep(20)}] * 9}
    with pytest.raises(GatewayError) as e:
        limits.check_request(endpoint, body, CAPS)
    assert e.value.param == "messages"  # the count, not the nesting
    assert walks == []


def test_too_many_inputs_and_a_long_model_name_come_before_the_walk(walks: list[Any]) -> None:
    with pytest.raises(GatewayError) as e:
        limits.check_request("embeddings", {"model": "m", "input": [deep(20)] * 5}, CAPS)
    assert e.value.param == "input"
    with pytest.raises(GatewayError) as e:
        limits.check_request("chat", {"model": "m" * 300, "messages": deep(20)}, CAPS)
    assert e.value.param == "model"
    assert walks == []


def test_within_the_counts_the_depth_is_still_checked(walks: list[Any]) -> None:
    with pytest.raises(GatewayError) as e:
        limits.check_request("chat", {"model": "m", "messages": [{"role": "user", "content": deep(20)}]}, CAPS)
    assert "nested" in str(e.value)
    assert len(walks) == 1


def test_a_large_body_is_walked_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[Any] = []
    real = limits.check_depth

    def spy(value: Any, limit: int, param: str | None = None) -> None:
        import threading

        threads.append(threading.current_thread())
        real(value, limit, param)

    monkeypatch.setattr(limits, "check_depth", spy)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def run() -> Any:
        import threading

        await limits.acheck_request("chat", body, CAPS, size=10)
        await limits.acheck_request("chat", body, CAPS, size=LARGE_BODY)
        return threading.current_thread()

    loop_thread = asyncio.run(run())
    assert threads[0] is loop_thread and threads[1] is not loop_thread


def test_the_messages_door_counts_turns_before_translating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a real gateway: 10,000 turns on /v1/messages are a 400 naming `messages`, and the
    door's translation never runs."""
    import httpx

    from gateway.protocols import anthropic
    from tests.support import API_KEY, gateway, make_settings

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("translated a request over the message cap")

    monkeypatch.setattr(anthropic, "request_in", boom)
    settings = make_settings([{"name": "mock", "targets": [{"provider": "mock", "model": "echo"}]}], limits={"max_messages": 64})
    body = {"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}] * 10_000}
    with gateway(settings) as (base, _app), httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/v1/messages", json=body, headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"})
    assert r.status_code == 400, r.text[:300]
    assert "messages" in r.text and "limit" in r.text

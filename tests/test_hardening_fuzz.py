"""Hardening (#17): fuzzed request bodies on every door never get a 5xx, and every error
comes back in the door's own error shape.

Doors: Chat Completions, Embeddings, Anthropic Messages and OpenAI Responses.
Hypothesis builds bodies around a valid request (extra fields, wrong types, nested values,
odd content parts, huge and empty strings) and posts them to a real gateway with guardrails
on. Deterministic (``derandomize``) and bounded, so the suite stays fast and repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import API_KEY, gateway, make_settings

POLICY = """\
id: fuzz
version: 1
owner: tests
rules:
  - id: redact-pii
    action: redact
    checks: [{type: pii}]
  - id: block-word
    checks: [{type: regex, deny: ['forbidden']}]
"""
FUZZ = settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40), st.sampled_from(["", "m", "forbidden", "bob@example.com", "\u0000", "user", "text", "image_url"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
deep = st.integers(1, 400).map(lambda n: _nest(n))
parts = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "Text", "tool_result", "video", "image_url", "refusal"])},
                          optional={"text": json_values, "content": json_values, "refusal": json_values}),
)
contents = st.one_of(st.text(max_size=60), st.lists(parts, max_size=4), json_values)
# Responses API input items: messages (typed parts), tool calls and their outputs, unknown items
response_items = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""])},
                              optional={"content": contents, "type": st.sampled_from(["message", "reasoning", "bogus"])}),
        st.fixed_dictionaries({"type": st.sampled_from(["function_call", "function_call_output", "item_reference", "input_text", "message"])},
                              optional={"call_id": json_values, "output": json_values, "name": json_values, "arguments": json_values,
                                        "id": json_values, "text": json_values, "content": contents}),
        json_values,
    ),
    max_size=4,
)
# ... and well-formed ones, so most bodies get past validation into the guardrails and back out
typed_parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "text", "refusal", "input_image", "input_file", "video"])},
                          optional={"text": st.one_of(st.text(max_size=30), st.sampled_from(["bob@example.com", "forbidden", ""]))}),
    max_size=3,
)
valid_items = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                               "content": st.one_of(st.text(max_size=40), st.sampled_from(["mail bob@example.com", "forbidden"]), typed_parts)},
                              optional={"type": st.just("message")}),
        st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.text(max_size=8), "name": st.text(max_size=8),
                               "arguments": st.text(max_size=20)}),
        st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.text(max_size=8),
                               "output": st.one_of(st.text(max_size=30), typed_parts)}),
    ),
    min_size=1, max_size=4,
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "robot", ""])},
                          optional={"content": contents, "name": json_values, "tool_call_id": json_values}),
    max_size=4,
)


def _nest(n: int) -> Any:
    v: Any = "x"
    for _ in range(n):
        v = [v] if n % 2 else {"k": v}
    return v


def body(base: dict[str, Any], fields: dict[str, Any], extras: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    extra = st.dictionaries(st.sampled_from([*fields, "metadata", "stream", "max_tokens", "temperature", "n", "tools", "user", *extras]),
                            st.one_of(json_values, deep), max_size=3)
    shaped = st.fixed_dictionaries({k: st.one_of(v, json_values) for k, v in fields.items()})
    return st.one_of(
        st.builds(lambda s, e: {**base, **s, **e}, shaped, extra),
        json_values,  # not even an object
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    d: Path = tmp_path_factory.mktemp("fuzz")
    (d / "p.yaml").write_text(POLICY)
    s = make_settings([{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}], policies={"paths": [str(d / "p.yaml")]},
                      limits={"max_json_depth": 32})
    with gateway(s) as (url, _), httpx.Client(base_url=url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def check_openai(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400:
        err = r.json()["error"]
        assert {"message", "type", "param", "code"} <= set(err), err


def check_anthropic(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400:
        data = r.json()
        assert data["type"] == "error" and {"type", "message"} <= set(data["error"]), data


@FUZZ
@given(body({"model": "m"}, {"model": st.sampled_from(["m", "nope", "m" * 300]), "messages": messages}))
def test_chat_door(client: httpx.Client, payload: Any) -> None:
    payload = {**payload, "stream": False} if isinstance(payload, dict) and payload.get("stream") is True else payload
    check_openai(client.post("/v1/chat/completions", json=payload))


@FUZZ
@given(body({"model": "m"}, {"model": st.just("m"), "input": st.one_of(st.text(max_size=40), st.lists(st.one_of(st.text(max_size=20), json_values), max_size=5))}))
def test_embeddings_door(client: httpx.Client, payload: Any) -> None:
    check_openai(client.post("/v1/embeddings", json=payload))


@FUZZ
@given(body({"model": "m", "max_tokens": 16}, {"model": st.just("m"), "max_tokens": st.integers(-5, 50), "messages": messages, "system": contents}))
def test_messages_door(client: httpx.Client, payload: Any) -> None:
    payload = {**payload, "stream": False} if isinstance(payload, dict) and payload.get("stream") is True else payload
    check_anthropic(client.post("/v1/messages", json=payload))


@FUZZ
@given(body({"model": "m"}, {"model": st.sampled_from(["m", "nope", "m" * 300]), "input": st.one_of(st.text(max_size=60), response_items),
                             "instructions": st.one_of(st.text(max_size=40), json_values)},
            ("store", "previous_response_id", "max_output_tokens", "text", "tool_choice", "reasoning", "include")))
def test_responses_door(client: httpx.Client, payload: Any) -> None:
    payload = {**payload, "stream": False} if isinstance(payload, dict) and payload.get("stream") is True else payload
    check_openai(client.post("/v1/responses", json=payload))


@FUZZ
@given(st.fixed_dictionaries({"model": st.just("m"), "input": st.one_of(st.text(max_size=40), valid_items)},
                             optional={"instructions": st.text(max_size=40), "store": st.booleans(), "max_output_tokens": st.integers(1, 64),
                                       "temperature": st.floats(0, 2), "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2)}))
def test_responses_door_well_formed(client: httpx.Client, payload: dict[str, Any]) -> None:
    r = client.post("/v1/responses", json=payload)
    check_openai(r)
    if r.status_code == 200:
        assert r.json()["object"] == "response"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"])
@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'{"model": "m", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}", b"\xff\xfe"])
def test_broken_json_on_every_door(client: httpx.Client, path: str, raw: bytes) -> None:
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    (check_anthropic if path == "/v1/messages" else check_openai)(r)

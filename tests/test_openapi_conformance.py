"""Gateway responses validate against OpenAI's own OpenAPI schemas (trimmed fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import orjson
import pytest

from tests.support import API_KEY, gateway, make_settings, target


def _nullable(node: object) -> object:
    """The spec still uses OpenAPI 3.0's `nullable: true`; JSON Schema spells it `null` in anyOf."""
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
        return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


DOC = _nullable(json.loads((Path(__file__).parent / "fixtures/openai/schemas.json").read_text()))


def check(instance: object, schema_name: str) -> None:
    schema = {**DOC, "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.fixture(scope="module")
def gw():
    from tests.support import FakeUpstream, serve_app

    up = FakeUpstream()
    with serve_app(up) as usrv:
        settings = make_settings([
            {"name": "chat", "targets": [target(usrv.url, "echo")]},
            {"name": "emb", "targets": [{"provider": "mock", "model": "echo"}]},
        ])
        with gateway(settings) as (url, _):
            yield url


def call(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"authorization": f"Bearer {API_KEY}"})


def test_chat_completion_schema(gw):
    r = call(gw, "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "validate me"}]})
    check(r.json(), "CreateChatCompletionResponse")


def test_chat_stream_chunk_schema(gw):
    r = call(gw, "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "a b c"}], "stream": True,
                                         "stream_options": {"include_usage": True}})
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for ev in events[:-1]:
        check(orjson.loads(ev), "CreateChatCompletionStreamResponse")


def test_completion_embedding_models_error_schemas(gw):
    check(call(gw, "/v1/completions", {"model": "chat", "prompt": "hi"}).json(), "CreateCompletionResponse")
    check(call(gw, "/v1/embeddings", {"model": "emb", "input": ["x", "y"]}).json(), "CreateEmbeddingResponse")
    h = {"authorization": f"Bearer {API_KEY}"}
    models = httpx.get(gw + "/v1/models", headers=h).json()
    check(models, "ListModelsResponse")
    check(httpx.get(gw + "/v1/models/chat", headers=h).json(), "Model")
    for bad in ({"model": "chat"}, {"model": "zzz", "messages": [{"role": "user", "content": "x"}]}):
        check(call(gw, "/v1/chat/completions", bad).json(), "ErrorResponse")

"""Feedback validation, storage and the POST /v1/feedback route."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gatehouse_core.feedback import FeedbackError, FeedbackStore, submit, validate
from gateway.feedback_routes import feedback_route

RECORDS = {
    "req-a": {"request_id": "req-a", "tenant": "t1", "model": "m"},
    "req-b": {"request_id": "req-b", "tenant": "t1", "model": "m"},
    "req-other": {"request_id": "req-other", "tenant": "t2", "model": "m"},
}


async def lookup(rid: str):
    return RECORDS.get(rid)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"rating": "up"}, "request_id"),
        ({"request_id": "req-a"}, None),
        ({"request_id": "req-a", "rating": "meh"}, "rating"),
        ({"request_id": "req-a", "score": 1.5}, "score"),
        ({"request_id": "req-a", "score": True}, "score"),
        ({"request_id": "req-a", "correction": "  "}, "correction"),
        ({"request_id": "req-a", "preferred_over": "req-a"}, "preferred_over"),
        ({"request_id": "req-a", "rating": "up", "ratting": 1}, "ratting"),
    ],
)
def test_validation_names_the_field(body, param):
    with pytest.raises(FeedbackError) as e:
        validate(body)
    assert e.value.param == param and e.value.status == 400


@pytest.fixture()
def client(tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    inner = Starlette(routes=[feedback_route(store, lookup)])

    async def app(scope, receive, send):  # the gateway's auth puts the caller in the scope
        if scope["type"] == "http":
            scope.setdefault("state", {})["caller"] = SimpleNamespace(tenant="t1")
        await inner(scope, receive, send)

    with TestClient(app) as c:
        yield c, store
    store.close()


def test_post_feedback_stores_with_record(client):
    c, store = client
    r = c.post("/v1/feedback", json={"request_id": "req-a", "rating": "up", "comment": "nice", "score": 0.9})
    assert r.status_code == 201 and r.json()["request_id"] == "req-a"
    r = c.post("/v1/feedback", json={"request_id": "req-a", "preferred_over": "req-b"})
    assert r.status_code == 201
    items = list(store.iter())
    assert len(items) == 2 and len(store) == 2
    fb, rec, other = items[1]
    assert fb.preferred_over == "req-b" and rec["request_id"] == "req-a" and other["request_id"] == "req-b"
    assert items[0][0].rating == "up" and items[0][0].tenant == "t1"


def test_errors_are_openai_shaped(client):
    c, store = client
    r = c.post("/v1/feedback", json={"request_id": "nope", "rating": "up"})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": r.json()["error"]["message"], "type": "invalid_request_error", "param": "request_id", "code": "request_not_found"}
    r = c.post("/v1/feedback", json={"request_id": "req-a", "preferred_over": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "preferred_over"
    r = c.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = c.post("/v1/feedback", json={"request_id": "req-a", "rating": "sideways"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rating"
    assert len(store) == 0


async def test_other_tenants_request_is_not_found(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    with pytest.raises(FeedbackError) as e:
        await submit(store, lookup, {"request_id": "req-other", "rating": "up"}, tenant="t1")
    assert e.value.status == 404
    item = await submit(store, lookup, {"request_id": "req-a", "rating": "down"}, tenant="t1")
    assert item.id.startswith("fb-")
    store.close()

"""Hardening (#17): every input is bounded, and an over-limit input is a 4xx in the error shape.

Findings covered: 1,000-message chats and 2,000-input embeddings calls, pass-through fields
nested past the serialisers' recursion limit (500 through the `openai` and `mock` providers),
100 KB model names, a 10 MB feedback body stored, a 32 MB request header accepted, feedback
from any tenant on a request that failed auth, deep feedback metadata (plain-text 500).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import API_KEY, free_port, gateway, make_settings, target

ADMIN_KEY = "sk-admin-test"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def assert_error_shape(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err  # type: ignore[no-any-return]


def nested(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.fixture
def gw(fake_upstream: Any, tmp_path: Path) -> Iterator[str]:
    url, _ = fake_upstream
    settings = make_settings(
        [
            {"name": "up", "targets": [target(url, "echo")]},
            {"name": "mock", "targets": [{"provider": "mock", "model": "echo"}]},
        ],
        auth={"keys": [
            {"id": "test-key", "tenant": "test", "key": API_KEY},
            {"id": "other-key", "tenant": "other", "key": "sk-other"},
        ]},
        admin={"key": ADMIN_KEY},
        traffic_log={"sink": "jsonl", "path": str(tmp_path / "traffic.jsonl"), "batch_size": 1},
        registry={"path": str(tmp_path / "registry")},
        prompts={"sqlite_path": str(tmp_path / "prompts.db")},
        limits={"max_messages": 64, "max_inputs": 32, "max_text_chars": 5000, "max_header_bytes": 4096,
                "max_control_body_bytes": 64 * 1024},
    )
    with gateway(settings) as (base, _app):
        yield base


def chat(model: str = "up", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_too_many_messages_and_inputs_are_400(gw: str) -> None:
    with httpx.Client(base_url=gw, headers=AUTH, timeout=30) as c:
        body = {"model": "up", "messages": [{"role": "user", "content": f"m{i}"} for i in range(65)]}
        assert_error_shape(c.post("/v1/chat/completions", json=body), 400, "limit_exceeded", "messages")
        body = {"model": "mock", "input": [f"text {i}" for i in range(33)]}
        assert_error_shape(c.post("/v1/embeddings", json=body), 400, "limit_exceeded", "input")
        body = {"model": "up", "messages": [{"role": "user", "content": "x" * 5001}]}
        assert_error_shape(c.post("/v1/chat/completions", json=body), 400, "limit_exceeded")
        # at the caps, requests still work
        body = {"model": "up", "messages": [{"role": "user", "content": f"m{i}"} for i in range(64)]}
        assert c.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize("model", ["up", "mock"])
def test_deeply_nested_pass_through_field_is_400_not_500(gw: str, model: str) -> None:
    with httpx.Client(base_url=gw, headers=AUTH, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=chat(model, metadata=nested(300)))
        err = assert_error_shape(r, 400, "limit_exceeded", "metadata")
        assert "nested more than" in err["message"]
        r = c.post("/v1/chat/completions", json=chat(model, tools=[nested(100)]))
        assert_error_shape(r, 400, "limit_exceeded", "tools")


def test_huge_model_name_is_400(gw: str) -> None:
    with httpx.Client(base_url=gw, headers=AUTH, timeout=30) as c:
        err = assert_error_shape(c.post("/v1/chat/completions", json=chat("m" * 100_000)), 400, "limit_exceeded", "model")
        assert len(err["message"]) < 200  # the name itself is not echoed back


def test_every_endpoint_has_a_body_limit(gw: str) -> None:
    big = b'{"request_id": "' + b"x" * (200 * 1024) + b'", "rating": "up"}'
    with httpx.Client(base_url=gw, timeout=30) as c:
        for path, key in [("/v1/feedback", API_KEY), ("/admin/prompts", ADMIN_KEY), ("/admin/reload", ADMIN_KEY)]:
            r = c.post(path, content=big, headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
            assert_error_shape(r, 413, "request_too_large")
            if path == "/admin/reload":
                continue  # it never reads a body, so an undeclared one costs nothing

            def chunks() -> Iterator[bytes]:  # no content-length: the limit counts what arrives
                for i in range(0, len(big), 16 * 1024):
                    yield big[i:i + 16 * 1024]

            r = c.post(path, content=chunks(), headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
            assert_error_shape(r, 413, "request_too_large")


def test_header_bytes_are_capped_in_the_app(gw: str) -> None:
    r = httpx.get(gw + "/healthz", headers={"x-pad": "p" * 8000})
    assert_error_shape(r, 431, "request_headers_too_large")
    assert httpx.get(gw + "/healthz").status_code == 200


def test_feedback_needs_the_records_tenant(gw: str) -> None:
    with httpx.Client(base_url=gw, timeout=30) as c:
        ok = c.post("/v1/chat/completions", json=chat(), headers=AUTH)
        rid = ok.headers["x-request-id"]
        denied = c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-wrong"})
        assert denied.status_code == 401
        anon = denied.headers["x-request-id"]
        # the record is in the traffic log once the writer has it
        deadline = time.monotonic() + 10
        while c.post("/v1/feedback", json={"request_id": rid, "rating": "up"}, headers=AUTH).status_code != 201:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        other = {"authorization": "Bearer sk-other"}
        assert_error_shape(c.post("/v1/feedback", json={"request_id": rid, "rating": "down"}, headers=other), 404, "request_not_found")
        for headers in (AUTH, other):
            r = c.post("/v1/feedback", json={"request_id": anon, "rating": "down"}, headers=headers)
            assert_error_shape(r, 404, "request_not_found")


def test_deep_feedback_metadata_is_400_in_the_error_shape(gw: str) -> None:
    with httpx.Client(base_url=gw, headers=AUTH, timeout=30) as c:
        for depth in (20, 600):
            r = c.post("/v1/feedback", json={"request_id": "req_x", "rating": "up", "metadata": nested(depth)})
            assert_error_shape(r, 400)


# ---- `gatehouse serve` (httptools) bounds header bytes before the app sees them -------------

@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "auth: {keys: [{id: k, tenant: t, key: sk-test}]}\n"
        "routes: [{name: m, targets: [{provider: mock, model: echo}]}]\n"
        "traffic_log: {sink: none}\nsafety: {backend: none}\n"
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gatehouse serve did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_serve_caps_header_bytes(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: ")
        try:
            for _ in range(64):  # 4 MB of one header
                s.sendall(b"p" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed
        s.settimeout(10)
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 431"), head[:100]
    assert b'"code":"request_headers_too_large"' in head

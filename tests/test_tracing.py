"""OpenTelemetry traces (gateway.tracing): the span tree, GenAI attributes, propagation, OTLP/HTTP export."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import REDIS_URL
from tests.support import API_KEY, gateway, make_settings, target

AUTH = {"authorization": f"Bearer {API_KEY}"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
POLICY = """\
id: tr
version: 1
owner: tests
stream: {holdback_chars: 20, context_chars: 100}
rules:
  - id: flag-word
    action: flag
    checks: [{type: regex, deny: ["glob[e]x"]}]
"""
PRICE = {"input": 1.0, "output": 2.0}


def _settings(up: str, tmp_path: Path, prefix: str, **kw: Any) -> Any:
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    return make_settings(
        [
            {"name": "m", "targets": [target(up, "flaky:503:1", name="flaky", price=PRICE)],
             "retries": {"attempts": 1, "backoff_base": 0}, "cache": True},
            {"name": "fb", "targets": [target(up, "error:503", name="down")], "fallbacks": [target(up, "echo", name="backup")],
             "retries": {"attempts": 0}},
        ],
        policies={"paths": [str(pol)], "reload": False},
        redis={"url": REDIS_URL, "key_prefix": prefix},
        traffic_log={"sink": "jsonl", "path": str(tmp_path / "t.jsonl")},
        **kw,
    )


class Exporter(InMemorySpanExporter):
    """In-memory exporter that lets a test wait for a request's server span (ended after the reply is sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()
        self.servers = 0

    def export(self, spans: Any) -> Any:
        result = super().export(spans)
        with self.cond:
            self.servers += sum(1 for s in spans if s.kind.name == "SERVER")
            self.cond.notify_all()
        return result

    def wait_servers(self, n: int) -> tuple[ReadableSpan, ...]:
        with self.cond:
            assert self.cond.wait_for(lambda: self.servers >= n, timeout=10), f"{self.servers} server spans, want {n}"
        return self.get_finished_spans()


def _by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_span_tree_and_genai_attributes(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str) -> None:
    up, _ = fake_upstream
    exporter = Exporter()
    with gateway(_settings(up, tmp_path, prefix), span_exporter=exporter) as (url, _app):
        headers = {**AUTH, "traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
        r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30,
                       json={"model": "m", "messages": [{"role": "user", "content": "tell me about globex"}]})
        assert r.status_code == 200, r.text
        spans = exporter.wait_servers(1)
        # a fallback: the first target fails, the fallback answers
        r2 = httpx.post(url + "/v1/chat/completions", headers=AUTH, json={"model": "fb", "messages": [{"role": "user", "content": "hi"}]})
        assert r2.status_code == 200
        fb_spans = exporter.wait_servers(2)[len(spans):]
    (server,) = [s for s in spans if s.parent is not None and s.parent.span_id == int(PARENT, 16)]
    assert server.name == "POST /v1/chat/completions" and format(server.context.trace_id, "032x") == TRACE_ID
    assert all(s.context.trace_id == server.context.trace_id for s in spans)
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id}
    assert {"gatehouse.auth", "gatehouse.rate_limit", "gatehouse.budget", "cache lookup", "guardrails input",
            "chat flaky:503:1", "guardrails output"} <= children
    a = server.attributes
    assert a is not None
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m" and a["gen_ai.response.model"] == "echo"
    assert a["gen_ai.provider.name"] == "openai" and tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    usage = r.json()["usage"]
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] and a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["http.response.status_code"] == 200 and a["gatehouse.tenant"] == "test" and a["gatehouse.attempts"] == 2
    assert a["gatehouse.cost"] > 0 and a["gatehouse.target"] == "flaky"
    # each upstream attempt: retry number, status
    attempts = sorted(_by_name(spans, "chat flaky:503:1"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["gatehouse.retry"] for s in attempts] == [0, 1]
    assert [(s.attributes or {})["gatehouse.upstream.status"] for s in attempts] == ["status", "ok"]
    assert (attempts[0].attributes or {})["http.response.status_code"] == 503 and not attempts[0].status.is_ok
    assert (attempts[1].attributes or {})["gen_ai.request.model"] == "flaky:503:1"
    # a guardrail check: category, score, action; never the text
    (stage,) = _by_name(spans, "guardrails input")
    checks = [s for s in spans if s.parent is not None and s.parent.span_id == stage.context.span_id]
    assert checks and checks[0].name == "guardrail regex"
    ca = checks[0].attributes or {}
    assert ca["gatehouse.guardrail.action"] == "flag" and ca["gatehouse.guardrail.category"] and ca["gatehouse.guardrail.score"] == 1.0
    leaks = [(s.name, k, v) for s in spans for k, v in (s.attributes or {}).items() if "globex" in str(v)]
    assert not leaks, leaks
    # the record joins the trace
    rec = orjson.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert rec["trace_id"] == TRACE_ID
    # the fallback attempt says so
    fb = {(s.attributes or {}).get("gatehouse.target"): s for s in fb_spans if s.kind.name == "CLIENT"}
    assert (fb["down"].attributes or {})["gatehouse.fallback"] is False and (fb["backup"].attributes or {})["gatehouse.fallback"] is True
    fb_server = next(s for s in fb_spans if s.parent is None)
    assert (fb_server.attributes or {})["gatehouse.target"] == "backup"


def test_stream_holdback_span(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str) -> None:
    up, _ = fake_upstream
    exporter = Exporter()
    with gateway(_settings(up, tmp_path, prefix), span_exporter=exporter) as (url, _):
        with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH, timeout=30,
                          json={"model": "fb", "stream": True, "messages": [{"role": "user", "content": "one two three four five six"}]}) as s:
            assert s.status_code == 200
            s.read()
        spans = exporter.wait_servers(1)
    (server,) = [s for s in spans if s.parent is None]
    (hold,) = _by_name(spans, "stream hold-back")
    assert hold.parent is not None and hold.parent.span_id == server.context.span_id
    assert (hold.attributes or {})["gatehouse.holdback.chunks"] > 1
    assert (server.attributes or {})["gatehouse.stream"] is True


def test_traceparent_goes_upstream(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "up",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    exporter = Exporter()
    settings = make_settings([{"name": "m", "targets": [target("http://up.invalid", "gpt-x", name="x")]}])
    with gateway(settings, transport=httpx.MockTransport(handler), span_exporter=exporter) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", headers=AUTH, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        spans = exporter.wait_servers(1)
    (attempt,) = [s for s in spans if s.kind.name == "CLIENT"]
    _, trace_id, parent_id, flags = seen[0].headers["traceparent"].split("-")
    assert int(trace_id, 16) == attempt.context.trace_id and int(parent_id, 16) == attempt.context.span_id and int(flags, 16) & 1  # sampled


def test_tracing_off_builds_nothing(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str) -> None:
    up, _ = fake_upstream
    with gateway(_settings(up, tmp_path, prefix)) as (url, app):
        assert httpx.post(url + "/v1/chat/completions", headers=AUTH, json={"model": "fb", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        rt = app.runtime
        assert rt.tracing is None and rt.router.tracing is None
        assert all(type(s).__name__ != "TracedStage" for s in rt.stages)
    rec = orjson.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert rec["trace_id"] is None


# --- a real OTLP/HTTP receiver on loopback -------------------------------------------------

class Receiver:
    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.requests: list[Any] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                outer.paths.append(self.path)
                outer.requests.append(req)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                out += [(res, sp) for ss in rs.scope_spans for sp in ss.spans]
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rcv = Receiver()
    rcv.thread.start()
    yield rcv
    rcv.server.shutdown()
    rcv.server.server_close()


def test_otlp_http_export_to_a_real_receiver(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str, receiver: Receiver) -> None:
    up, _ = fake_upstream
    settings = _settings(up, tmp_path, prefix, tracing={"endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces", "service_name": "gh-test"})
    with gateway(settings) as (url, app):
        r = httpx.post(url + "/v1/chat/completions", headers={**AUTH, "traceparent": f"00-{TRACE_ID}-{PARENT}-01"},
                       json={"model": "fb", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    # the gateway's shutdown flushed the batch processor
    spans = receiver.spans()
    assert receiver.paths and all(p == "/v1/traces" for p in receiver.paths)
    assert spans and all(res["service.name"] == "gh-test" for res, _ in spans)
    assert all(sp.trace_id.hex() == TRACE_ID for _, sp in spans)
    server = next(sp for _, sp in spans if sp.parent_span_id.hex() == PARENT)
    attrs = {kv.key: kv.value for kv in server.attributes}
    assert attrs["gen_ai.request.model"].string_value == "fb" and attrs["gen_ai.operation.name"].string_value == "chat"
    assert attrs["gen_ai.usage.output_tokens"].int_value > 0
    names = {sp.name for _, sp in spans}
    assert {"POST /v1/chat/completions", "chat error:503", "chat echo", "guardrails input"} <= names
    text = app.runtime.metrics.render()[0].decode()
    assert f'gatehouse_tracing_exported_spans_total{{result="success"}} {float(len(spans))}' in text


def test_exporter_failures_are_counted(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    up, _ = fake_upstream
    settings = _settings(up, tmp_path, prefix, tracing={"endpoint": f"http://127.0.0.1:{dead}/v1/traces", "export_timeout": 1})
    with gateway(settings) as (url, app):
        assert httpx.post(url + "/v1/chat/completions", headers=AUTH, json={"model": "fb", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    text = app.runtime.metrics.render()[0].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith('gatehouse_tracing_exported_spans_total{result="failure"}'))
    assert float(line.split()[-1]) > 0


def test_unsampled_requests_make_no_spans(tmp_path: Path) -> None:
    """Sampling 0: a request with no traceparent starts no trace at all; one whose caller did not
    sample its trace creates no spans either, but still passes the trace on upstream."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "up",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

    exporter = Exporter()
    log = tmp_path / "t.jsonl"
    settings = make_settings([{"name": "m", "targets": [target("http://up.invalid", "gpt-x", name="x")]}],
                             tracing={"sample_ratio": 0.0}, traffic_log={"sink": "jsonl", "path": str(log)})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with gateway(settings, transport=httpx.MockTransport(handler), span_exporter=exporter) as (url, _app):
        assert httpx.post(url + "/v1/chat/completions", headers=AUTH, json=body).status_code == 200
        parent = {**AUTH, "traceparent": f"00-{TRACE_ID}-{PARENT}-00"}
        assert httpx.post(url + "/v1/chat/completions", headers=parent, json=body).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in seen[0].headers
    _, trace_id, _, flags = seen[1].headers["traceparent"].split("-")
    assert trace_id == TRACE_ID and not int(flags, 16) & 1  # not sampled: the upstream may not record it either
    recs = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert [r["trace_id"] for r in recs] == [None, TRACE_ID]


def test_demo_gateway_yields_one_trace_per_request_and_costs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """The issue's acceptance: the demo gateway with tracing configured gives one trace per request whose
    spans show where the time went, and every record carries its cost."""
    from gateway.cli.serve import resolve_config

    monkeypatch.chdir(tmp_path)  # the demo builds its recitation index under ./.gatehouse
    for name in ("GATEHOUSE_DEMO_RECITATION", "GATEHOUSE_DEMO_POLICIES"):
        monkeypatch.setenv(name, "-")
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEHOUSE_DEMO_KEY", "sk-gatehouse-demo")
    monkeypatch.setenv("GATEHOUSE_LOG", str(tmp_path / "traffic.jsonl"))
    monkeypatch.setenv("GATEHOUSE_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}/v1/traces")
    settings, _ = resolve_config(None, demo=True)
    demo = {"authorization": "Bearer sk-gatehouse-demo"}
    body = {"model": "demo", "messages": [{"role": "user", "content": "Where did the time go in this request?"}]}
    with gateway(settings) as (url, _app):
        r = httpx.post(url + "/v1/chat/completions", headers=demo, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert float(r.headers["x-gatehouse-cost"]) > 0
        with httpx.stream("POST", url + "/v1/chat/completions", headers=demo, json={**body, "stream": True}, timeout=60) as s:
            assert s.status_code == 200
            s.read()
    recs = [orjson.loads(line) for line in (tmp_path / "traffic.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(rec["cost"] > 0 and rec["cost_estimated"] is False for rec in recs)
    spans = receiver.spans()
    by_trace: dict[str, list[Any]] = {}
    for _, sp in spans:
        by_trace.setdefault(sp.trace_id.hex(), []).append(sp)
    assert sorted(by_trace) == sorted(rec["trace_id"] for rec in recs)  # one trace per request, joined by the record
    for rec in recs:
        names = [sp.name for sp in by_trace[rec["trace_id"]]]
        assert names.count("POST /v1/chat/completions") == 1
        assert {"gatehouse.auth", "guardrails input", "chat echo"} <= set(names)
        assert any(n.startswith("guardrail ") for n in names)
        assert ("stream hold-back" in names) == rec["stream"]


def test_anthropic_messages_door_is_traced(fake_upstream: tuple[str, Any], tmp_path: Path, prefix: str) -> None:
    up, _ = fake_upstream
    exporter = Exporter()
    with gateway(_settings(up, tmp_path, prefix), span_exporter=exporter) as (url, _):
        r = httpx.post(url + "/v1/messages", headers={"x-api-key": API_KEY, "traceparent": f"00-{TRACE_ID}-{PARENT}-01"},
                       json={"model": "fb", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        spans = exporter.wait_servers(1)
    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    a = server.attributes or {}
    assert server.name == "POST /v1/messages" and format(server.context.trace_id, "032x") == TRACE_ID
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "fb" and a["gatehouse.target"] == "backup"
    assert a["gen_ai.usage.output_tokens"] == r.json()["usage"]["output_tokens"]
    assert {"gatehouse.budget", "guardrails input", "chat error:503", "chat echo"} <= {s.name for s in spans}

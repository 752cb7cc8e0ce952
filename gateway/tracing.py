"""OpenTelemetry traces: one trace per request, following the GenAI semantic conventions.

Off unless ``tracing.endpoint`` is set; then the app holds one ``Tracing`` (its own
``TracerProvider``, never the process-global one) and the request path calls it
through a few hooks. With tracing off the hooks are skipped (``rt.tracing is None``):
no span objects are created.

The tree of one request (``SERVER`` span continuing an incoming ``traceparent``)::

    POST /v1/chat/completions            gen_ai.*, http.*, gatehouse.* (tenant, target, cost, ...)
    ├── gatehouse.auth                   key lookup
    ├── gatehouse.rate_limit             admission (until the request is let through)
    ├── gatehouse.budget                 budget admission
    ├── prompt render / grounding retrieval / cache lookup / guardrails input   (one per stage)
    │   └── guardrail <check>            one per verdict: rule, category, score, action
    ├── chat <model>  (CLIENT)           one per upstream attempt: target, retry, fallback, status
    ├── guardrails output                whole replies
    └── stream hold-back                 streams: from the first chunk to the end of the filters

Guardrail check spans are built from each verdict's measured latency, ending when its
stage ended (checks of one stage run concurrently). Their text is never recorded; a
verdict's ``detail`` (which may quote text) is added only when ``traffic_log.log_bodies``
is on. Each upstream attempt's ``traceparent`` goes to the upstream (``TRACEPARENT``,
read by the OpenAI provider). The traffic record carries the trace id.

Export: OTLP/HTTP (protobuf) through a ``BatchSpanProcessor``; every export counts in
``gatehouse_tracing_exported_spans_total{result}`` (the exporter-failure alert).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.model import Chunk, Reply
from gateway.providers import TRACEPARENT
from gateway.types import RequestContext, StreamBlocked, TrafficRecord

if TYPE_CHECKING:
    from gateway.routing import Arm

log = logging.getLogger("gatehouse.tracing")

# gen_ai.operation.name per endpoint (the Anthropic Messages and Responses doors are chat, per the semconv)
OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "messages": "chat", "responses": "chat"}
PROVIDER = {"openai": "openai", "anthropic": "anthropic", "mock": "gatehouse.mock", "local": "gatehouse.local"}
STAGE_SPAN = {"prompts": "prompt render", "grounding": "grounding retrieval", "cache": "cache lookup", "guardrails": "guardrails input"}
OPEN_SPANS = "tracing.open"  # ctx.state: spans a stream may leave open when the client leaves


class CountingExporter(SpanExporter):
    """Counts what the real exporter managed to send (exports run in the processor's thread)."""

    def __init__(self, inner: SpanExporter, metrics: Metrics) -> None:
        self.inner = inner
        c = metrics.counter("tracing_exported_spans_total", "Spans handed to the trace exporter, by result", ("result",))
        self._ok, self._failed = c.labels("success"), c.labels("failure")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            log.exception("trace export raised")
            result = SpanExportResult.FAILURE
        (self._ok if result == SpanExportResult.SUCCESS else self._failed).inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _getter_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in (b"traceparent", b"tracestate")}



class RequestSpan:
    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self.token = token


class Tracing:
    def __init__(self, settings: Settings, metrics: Metrics, exporter: SpanExporter | None = None) -> None:
        cfg = settings.tracing
        self.log_bodies = settings.traffic_log.log_bodies
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=dict(cfg.headers), timeout=cfg.export_timeout)
            processor: Any = BatchSpanProcessor(CountingExporter(exporter, metrics), max_queue_size=cfg.max_queue_size,
                                                export_timeout_millis=cfg.export_timeout * 1000)
        else:  # injected (tests): export synchronously, so a finished request's spans are there at once
            processor = SimpleSpanProcessor(CountingExporter(exporter, metrics))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("gatehouse")
        self.propagator = TraceContextTextMapPropagator()
        self.ratio = cfg.sample_ratio
        self._random = random.random
        self.providers: dict[str, str] = {}
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        self.providers = {t.key: t.provider for r in settings.routes for t in (*r.targets, *r.fallbacks)}

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: the app runs it in a thread at shutdown)."""
        self.provider.shutdown()

    # --- the request span -------------------------------------------------------------
    def start_request(self, scope: dict[str, Any], record: TrafficRecord | None) -> RequestSpan | None:
        """The server span, or None for a request that starts no trace.

        Head sampling at the edge: a request without an incoming ``traceparent`` that loses the
        ``sample_ratio`` draw gets no span objects at all (no trace id in its record, no
        ``traceparent`` upstream), so a low ratio costs next to nothing. A request with a
        ``traceparent`` follows its parent's sampling decision through the SDK."""
        headers = _getter_headers(scope)
        if not headers and self.ratio < 1.0 and self._random() >= self.ratio:
            return None
        parent = self.propagator.extract(headers)
        path = scope["path"]
        span = self.tracer.start_span(f"{scope['method']} {path}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": scope["method"], "url.path": path})
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        if record is not None:
            span.set_attribute("gatehouse.request_id", record.request_id)
            record.trace_id = format(span.get_span_context().trace_id, "032x")
        return RequestSpan(span, token)

    def end_request(self, rs: RequestSpan, status: int, record: TrafficRecord | None, ctx: RequestContext | None) -> None:
        span = rs.span
        try:
            if ctx is not None:
                for s in ctx.state.pop(OPEN_SPANS, ()):
                    s.end()
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
                if record is not None:
                    self._genai(span, record)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, record.error_kind if record is not None else None))
            span.end()
        finally:
            otel_context.detach(rs.token)

    def _genai(self, span: Any, r: TrafficRecord) -> None:
        a: dict[str, Any] = {"gen_ai.operation.name": OPERATION.get(r.endpoint, r.endpoint)}
        fields = {
            "gen_ai.request.model": r.model, "gen_ai.response.model": r.response_model,
            "gen_ai.usage.input_tokens": r.prompt_tokens, "gen_ai.usage.output_tokens": r.completion_tokens,
            "gen_ai.provider.name": PROVIDER.get(self.providers.get(r.target or "", ""), None),
            "gatehouse.tenant": r.tenant, "gatehouse.key_id": r.key_id, "gatehouse.target": r.target,
            "gatehouse.variant": r.variant, "gatehouse.attempts": r.attempts, "gatehouse.stream": r.stream,
            "gatehouse.cost": r.cost, "gatehouse.cost_estimated": r.cost_estimated, "gatehouse.currency": r.currency,
            "gatehouse.cache_hit": r.cache_hit, "gatehouse.error_kind": r.error_kind,
            "gatehouse.overhead_ms": r.overhead_ms, "gatehouse.ttft_ms": r.ttft_ms, "gatehouse.policy_version": r.policy_version,
            "gatehouse.prompt_id": r.prompt_id, "gatehouse.prompt_version": r.prompt_version,
        }
        a.update({k: v for k, v in fields.items() if v is not None})
        if r.finish_reason:
            a["gen_ai.response.finish_reasons"] = [r.finish_reason]
        span.set_attributes(a)

    # --- children ---------------------------------------------------------------------
    # An unsampled request creates no child spans at all (sampling 0.01 then costs next to
    # nothing): each hook first asks whether the current span records.
    @staticmethod
    def recording() -> bool:
        return trace.get_current_span().is_recording()

    @contextmanager
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
        if not self.recording():
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes, record_exception=False) as s:
            try:
                yield s
            except BaseException as exc:
                s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    async def admission(self, name: str, run: Any, app: Any) -> None:
        """Span from a middleware's entry until it lets the request through (``run(inner_app)``)."""
        if not self.recording():
            await run(app)
            return
        span = self.tracer.start_span(name)
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                span.end()

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            end()
            await app(scope, receive, send)

        try:
            await run(inner)
        except BaseException as exc:
            if not ended:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"))
            raise
        finally:
            end()

    def verdict_spans(self, verdicts: Sequence[Any], end_ns: int) -> None:
        for v in verdicts:
            attrs: dict[str, Any] = {"gatehouse.guardrail.rule": v.rule, "gatehouse.guardrail.check": v.check,
                                     "gatehouse.guardrail.category": v.category, "gatehouse.guardrail.score": float(v.score),
                                     "gatehouse.guardrail.action": v.action, "gatehouse.guardrail.direction": v.direction}
            if self.log_bodies and v.detail:
                attrs["gatehouse.guardrail.detail"] = str(v.detail)
            s = self.tracer.start_span(f"guardrail {v.check}", attributes=attrs, start_time=end_ns - int(v.latency_ms * 1e6))
            if v.action == "block":
                s.set_status(Status(StatusCode.ERROR, "blocked"))
            s.end(end_time=end_ns)

    def attempt(self, arm: Arm, endpoint: str, retry: int, fallback: bool) -> Any:
        """A CLIENT span for one upstream attempt; current (so its traceparent goes upstream) until ``end_attempt``."""
        if not self.recording():  # still tell the upstream which (unsampled) trace this is
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)
            return None, TRACEPARENT.set(carrier.get("traceparent"))
        t = arm.target
        op = OPERATION.get(endpoint, endpoint)
        span = self.tracer.start_span(f"{op} {t.model}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": op, "gen_ai.request.model": t.model,
            "gen_ai.provider.name": PROVIDER.get(t.provider, t.provider), "gatehouse.target": arm.name,
            "gatehouse.retry": retry, "gatehouse.fallback": fallback,
            **({"server.address": t.base_url} if t.base_url else {}),
        })
        carrier = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        token = TRACEPARENT.set(carrier.get("traceparent"))
        return span, token

    @staticmethod
    def end_attempt(handle: Any, failure: Any | None) -> None:
        span, token = handle
        TRACEPARENT.reset(token)
        if span is None:
            return
        if failure is None:
            span.set_attribute("gatehouse.upstream.status", "ok")
        else:
            span.set_attribute("gatehouse.upstream.status", failure.kind)
            if failure.status is not None:
                span.set_attribute("http.response.status_code", failure.status)
            span.set_status(Status(StatusCode.ERROR, failure.message))
        span.end()

    # --- stages -----------------------------------------------------------------------
    def wrap_stages(self, stages: Sequence[Any]) -> list[Any]:
        return [TracedStage(s, self) for s in stages]


class TracedStage:
    """A stage with a span around each hook; everything else passes through."""

    def __init__(self, stage: Any, tracing: Tracing) -> None:
        self._stage = stage
        self._tracing = tracing
        self.name = stage.name
        self.runs_on_short_circuit = stage.runs_on_short_circuit
        self._span_name = STAGE_SPAN.get(stage.name, f"stage {stage.name}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)

    async def on_request(self, ctx: RequestContext) -> None:
        await self._traced(self._span_name, ctx, self._stage.on_request(ctx))

    async def on_response(self, ctx: RequestContext, reply: Reply) -> Reply:
        name = "guardrails output" if self.name == "guardrails" else f"{self.name} on response"
        result: Reply = await self._traced(name, ctx, self._stage.on_response(ctx, reply))
        return result

    async def _traced(self, name: str, ctx: RequestContext, coro: Any) -> Any:
        if not self._tracing.recording():
            return await coro
        n = len(ctx.record.verdicts)
        with self._tracing.span(name):
            try:
                return await coro
            finally:
                self._tracing.verdict_spans(ctx.record.verdicts[n:], time.time_ns())

    def stream_filter(self, ctx: RequestContext) -> Any:
        f = self._stage.stream_filter(ctx)
        return f if f is None or not self._tracing.recording() else TracedFilter(f, ctx, self._tracing)


class TracedFilter:
    """The stream's hold-back: one span from the first chunk to the end, verdicts as children."""

    def __init__(self, inner: Any, ctx: RequestContext, tracing: Tracing) -> None:
        self.inner = inner
        self.ctx = ctx
        self.tracing = tracing
        self.span: Any = None
        self.busy_ns = 0
        self.chunks = 0

    def _start(self) -> None:
        if self.span is None:
            self.span = self.tracing.tracer.start_span("stream hold-back")
            self.ctx.state.setdefault(OPEN_SPANS, []).append(self)

    async def _run(self, coro: Any, final: bool) -> Any:
        self._start()
        n = len(self.ctx.record.verdicts)
        t0 = time.perf_counter_ns()
        ctx_token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            return await coro
        except StreamBlocked as blk:
            self.span.set_status(Status(StatusCode.ERROR, "blocked"))
            self.span.set_attribute("gatehouse.guardrail.rule", blk.rule)
            final = True
            raise
        finally:
            self.busy_ns += time.perf_counter_ns() - t0
            self.tracing.verdict_spans(self.ctx.record.verdicts[n:], time.time_ns())
            otel_context.detach(ctx_token)
            if final:
                self.end()

    async def feed(self, chunk: Chunk) -> list[Chunk]:
        self.chunks += 1
        result: list[Chunk] = await self._run(self.inner.feed(chunk), False)
        return result

    async def finish(self) -> list[Chunk]:
        result: list[Chunk] = await self._run(self.inner.finish(), True)
        return result

    def end(self) -> None:
        """End the span (idempotent: also called for a stream the client abandoned)."""
        if self.span is not None and self.span.is_recording():
            self.span.set_attributes({"gatehouse.holdback.chunks": self.chunks, "gatehouse.holdback.busy_ms": self.busy_ns / 1e6})
            self.span.end()
            open_spans = self.ctx.state.get(OPEN_SPANS)
            if open_spans and self in open_spans:
                open_spans.remove(self)


def build_tracing(settings: Settings, metrics: Metrics, exporter: SpanExporter | None = None) -> Tracing | None:
    """The app's tracing, or None (off) when no endpoint is configured and no exporter injected."""
    if settings.tracing.endpoint is None and exporter is None:
        return None
    return Tracing(settings, metrics, exporter)

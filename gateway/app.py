"""The ASGI application.

``create_app(settings)`` returns the stack, outermost first:

1. ``RequestIdAndErrors`` — request id, the one error translation point, and the
   traffic record of every ``/v1`` request (emitted when the response is done);
2. ``Authenticate`` — API key -> ``Caller``; deny by default (open: /healthz,
   /readyz and, if configured, /metrics); ``/admin`` needs the admin key;
3. ``RateLimit`` — per key/tenant limits, shared across replicas via Redis;
4. ``Budget`` — per key/tenant spend limits (``gateway.budgets``), held on admission and
   settled with the real cost after the reply;
5. ``Dispatch`` — the hot OpenAI endpoints as plain ASGI handlers, everything else
   (models, health, metrics, admin, feedback) on a Starlette router.

Heavy objects (the upstream HTTP client, models, indexes, the traffic log) are
built once in the lifespan, hung on ``Runtime`` and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from gateway import api, doors, limits, moderations
from gateway.asgi import ASGIApp, Receive, Scope, Send, parse_json
from gateway.auth import bearer
from gateway.config import Settings
from gateway.errors import ErrorKind, GatewayError
from gateway.routing import Route
from gateway.runtime import Runtime
from gateway.types import (
    CONTEXT_HEADERS,
    ENDPOINT,
    INTERNAL_CALLER,
    PARSED_BODY,
    Caller,
    RequestContext,
    TrafficRecord,
)

log = logging.getLogger("gatehouse")
OVERHEAD_HEADER = b"x-gatehouse-overhead-ms"
TRACED = "traced"  # scope state: this request has a server span


HOT_PATHS: dict[str, api.Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/moderations": "moderations",
    "/v1/messages": "messages",  # Anthropic Messages door (gateway.doors)
    "/v1/responses": "responses",  # OpenAI Responses door (gateway.doors)
}
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CONSOLE_PREFIX = "/console"  # the web console signs its users in itself (gateway.console)


# ---- middleware -------------------------------------------------------------------------

def error_response(err: GatewayError, request_id: str, door: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The error in the door's own shape (OpenAI's, or Anthropic's on /v1/messages)."""
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
    return (
        {"type": "http.response.start", "status": err.status, "headers": headers},
        {"type": "http.response.body", "body": err.json_bytes_for(door)},
    )


def _upstream(state: dict[str, Any]) -> float:
    ctx = state.get("ctx")
    return ctx.upstream_seconds if ctx is not None else 0.0


class RequestIdAndErrors:
    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.rt
        request_id = "req_" + uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path = scope["path"]
        # the one HOT_PATHS lookup of a request: the inner middlewares read it from the state
        endpoint = state[ENDPOINT] = HOT_PATHS.get(path)
        record = TrafficRecord(request_id=request_id, ts_start=time.time(), endpoint=endpoint or path) if endpoint else None
        state["record"] = record
        started = False
        rid = request_id.encode()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # time in the gateway so far, upstream wait excluded (a stream's: until its headers)
                overhead = time.perf_counter() - t0 - _upstream(state)
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid),
                                      (OVERHEAD_HEADER, b"%.2f" % (max(overhead, 0.0) * 1000))]
                if record is not None and not record.status:
                    record.status = message["status"]
            await send(message)

        t0 = time.perf_counter()
        if record is not None:
            rt.metrics.inflight.inc()
        span = rt.tracing.start_request(scope, record) if rt.tracing is not None and record is not None else None
        state[TRACED] = span is not None  # the inner hooks skip tracing for a request with no trace
        try:
            receive = self._bounded(scope, receive, endpoint is not None)
            await self.app(scope, receive, send_with_id)
        except GatewayError as err:
            self._note_error(record, err.status, err.kind.value, err.message)
            if not started:
                start, body = error_response(err, request_id, endpoint)
                start["headers"].append((OVERHEAD_HEADER, b"%.2f" % ((time.perf_counter() - t0 - _upstream(state)) * 1000)))
                await send(start)
                await send(body)
        except Exception as exc:  # our bug: a 500, never disguised as a client error
            log.exception("unhandled error in request %s", request_id)
            self._note_error(record, 500, ErrorKind.INTERNAL.value, f"{type(exc).__name__}: {exc}")
            if not started:
                internal = GatewayError(ErrorKind.INTERNAL, f"Internal error (request id {request_id}); see gateway logs.")
                start, body = error_response(internal, request_id, endpoint)
                await send(start)
                await send(body)
        finally:
            if record is not None:
                rt.metrics.inflight.dec()
                self._finish(record, state.get("ctx"), t0)
            if span is not None:
                assert rt.tracing is not None and record is not None
                rt.tracing.end_request(span, record.status, record, state.get("ctx"))

    def _bounded(self, scope: Scope, receive: Receive, hot: bool) -> Receive:
        """Header and body limits for every endpoint (413/431 in the error shape)."""
        s = self.rt.settings
        limits.check_headers(scope["headers"], s.limits.max_header_bytes)
        limit = s.server.max_body_bytes if hot else s.limits.max_control_body_bytes
        declared = limits.declared_length(scope["headers"])
        if declared is not None and declared > limit:
            raise limits.too_large(limit)
        return limits.bounded_receive(receive, limit)

    @staticmethod
    def _note_error(record: TrafficRecord | None, status: int, kind: str, message: str) -> None:
        if record is not None:
            record.status = status
            record.error_kind = kind
            record.error_message = message

    def _finish(self, record: TrafficRecord, ctx: RequestContext | None, t0: float) -> None:
        rt = self.rt
        elapsed = time.perf_counter() - t0
        record.ts_end = time.time()
        record.latency_ms = elapsed * 1000
        model = record.model if record.model in rt.router.routes else ""
        overhead = None
        if ctx is not None:
            overhead = max(0.0, elapsed - ctx.upstream_seconds)
            record.overhead_ms = overhead * 1000
        rt.metrics.observe_request(
            model, record.target or "", record.status, elapsed, overhead,
            None if record.ttft_ms is None else record.ttft_ms / 1000, record.prompt_tokens, record.completion_tokens,
        )
        if rt.traffic is not None:
            rt.traffic.emit(record)


class Authenticate:
    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN_PATHS or (path == "/metrics" and self.rt.settings.auth.public_metrics):
            await self.app(scope, receive, send)
            return
        internal = scope.get(INTERNAL_CALLER)
        if internal is not None:
            scope["state"]["caller"] = internal
            record = scope["state"].get("record")
            if record is not None:
                record.tenant, record.key_id = internal.tenant, internal.key_id
            await self.app(scope, receive, send)
            return
        if self.rt.settings.console.enabled and (path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")):
            await self.app(scope, receive, send)  # cookie sessions, roles and CSRF: gateway.console
            return
        key = bearer(scope["headers"])
        if path.startswith("/admin"):
            admin = self.rt.settings.admin.key.get_secret_value() if self.rt.settings.admin.key else os.environ.get("GATEHOUSE_ADMIN_KEY")
            if not admin:
                raise GatewayError(ErrorKind.PERMISSION, "The admin API is disabled: set admin.key (or GATEHOUSE_ADMIN_KEY).", code="admin_disabled")
            if key is None or not hmac.compare_digest(key.encode(), admin.encode()):
                raise GatewayError(ErrorKind.AUTHENTICATION, "A valid admin key is required for /admin.")
            scope["state"]["caller"] = Caller(tenant="admin", key_id="admin", scopes=("admin",))
            await self.app(scope, receive, send)
            return
        if key is None:
            raise GatewayError(
                ErrorKind.AUTHENTICATION,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        if self.rt.tracing is None or not scope["state"].get(TRACED):
            caller = await self.rt.keys.lookup(key)
        else:
            with self.rt.tracing.span("gatehouse.auth"):
                caller = await self.rt.keys.lookup(key)
        if caller is None:
            shown = key[:6] + "..." if len(key) > 10 else "***"
            raise GatewayError(ErrorKind.AUTHENTICATION, f"Incorrect API key provided: {shown}.")
        scope["state"]["caller"] = caller
        record = scope["state"].get("record")
        if record is not None:
            record.tenant = caller.tenant
            record.key_id = caller.key_id
        await self.app(scope, receive, send)


class RateLimit:
    """Admission per caller; the limiter itself lives in ``gateway.ratelimit``."""

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.rt.limiter
        state = scope.get("state", {})
        caller = state.get("caller")
        if limiter is None or caller is None or state.get(ENDPOINT) is None:
            await self.app(scope, receive, send)
            return
        if self.rt.tracing is None or not scope["state"].get(TRACED):
            await limiter.admit(scope, receive, send, caller, self.app)
            return
        await self.rt.tracing.admission("gatehouse.rate_limit", lambda inner: limiter.admit(scope, receive, send, caller, inner), self.app)


class Budget:
    """Spend admission per caller on every hot path (each door, streams included)."""

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budgets = self.rt.budgets
        state = scope.get("state", {})
        caller = state.get("caller")
        if budgets is None or caller is None or state.get(ENDPOINT) is None:
            await self.app(scope, receive, send)
            return
        if self.rt.tracing is None or not scope["state"].get(TRACED):
            await budgets.admit(scope, receive, send, caller, self.app)
            return
        await self.rt.tracing.admission("gatehouse.budget", lambda inner: budgets.admit(scope, receive, send, caller, inner), self.app)


class Dispatch:
    def __init__(self, rt: Runtime, fallback: ASGIApp) -> None:
        self.rt = rt
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope["state"].get(ENDPOINT) if scope["type"] == "http" else None
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"{scope['path']} accepts POST only, got {scope['method']}.")
        rt = self.rt
        raw = await api.read_body(receive, rt.settings.server.max_body_bytes)
        state = scope["state"]
        if PARSED_BODY in state:  # the token rate limit parsed it to estimate the reservation
            body = state.pop(PARSED_BODY)
        else:
            try:
                # a large body is parsed off the event loop
                body = await parse_json(raw)
            except orjson.JSONDecodeError as exc:
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"The request body is not valid JSON: {exc}.") from None
        await limits.acheck_request(endpoint, body, rt.settings.limits, len(raw))  # before anything recursive touches it
        request = api.chat_door(body, rt.settings.limits) if endpoint == "chat" else None
        headers = {CONTEXT_HEADERS[k]: v.decode("latin-1") for k, v in scope["headers"] if k in CONTEXT_HEADERS}
        ctx = RequestContext(
            request_id=state["request_id"], endpoint=endpoint, caller=state["caller"], body=body if isinstance(body, dict) else {},
            headers=headers, record=state["record"], request=request,
        )
        state["ctx"] = ctx
        try:
            if endpoint == "moderations":
                await moderations.handle(rt, ctx, send)
                return
            door = doors.BY_ENDPOINT.get(endpoint)
            if door is not None:
                await doors.enter(rt, ctx, door, body)
            elif not isinstance(body, dict):
                api.validate(endpoint, body)
            await api.handle_complete(rt, ctx, ctx.endpoint, send, receive)
        finally:
            api.settle_cost(rt, ctx)  # a whole reply settled before its headers; this covers the rest


# ---- non-hot routes -------------------------------------------------------------------

def model_card(route: Route) -> dict[str, Any]:
    return {
        "id": route.name,
        "object": "model",
        "created": 0,
        "owned_by": route.settings.owner,
        "gatehouse": {
            "providers": sorted({a.target.provider for a in [*route.arms, *route.fallbacks]}),
            "capabilities": sorted(route.capabilities),
            "targets": [{"name": a.name, "provider": a.target.provider, "variant": a.variant, "weight": a.target.weight} for a in route.arms],
            "fallbacks": [a.name for a in route.fallbacks],
            "description": route.settings.description,
        },
    }


def build_starlette(rt: Runtime) -> Starlette:
    async def list_models(request: Request) -> Response:
        caller: Caller = request.scope["state"]["caller"]
        data = [model_card(r) for name, r in sorted(rt.router.routes.items()) if caller.may_use(name)]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        route = rt.router.get(name)
        return JSONResponse(model_card(route))

    async def get_response(request: Request) -> Response:
        caller: Caller = request.scope["state"]["caller"]
        entry = await rt.responses.get(caller.tenant, request.path_params["response_id"])
        if entry is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"No stored response with id {request.path_params['response_id']!r}.",
                               param="response_id", code="response_not_found")
        return Response(orjson.dumps(entry["response"]), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, Any] = {"started": rt.started}
        for p in rt._providers.values():
            checks[f"model:{p.target.key}"] = await p.ready()
        if rt.services.redis is not None:
            try:
                await asyncio.wait_for(rt.services.redis.ping(), 1.0)
                checks["redis"] = True
            except Exception:
                checks["redis"] = False
        if rt.limiter is not None and hasattr(rt.limiter, "healthy"):
            checks["rate_limiter"] = bool(rt.limiter.healthy)
        if rt.budgets is not None and not rt.budgets.store.empty:
            checks["budgets"] = bool(rt.budgets.healthy)
        for stage in rt.stages:
            ready = getattr(stage, "ready", None)
            if ready is not None:
                checks[f"stage:{stage.name}"] = bool(await ready()) if asyncio.iscoroutinefunction(ready) else bool(ready())
        ok = all(v is True for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        data, ctype = rt.metrics.render()
        return Response(data, media_type=ctype)

    async def admin_reload(request: Request) -> Response:
        return JSONResponse(await rt.reload("admin"))

    async def admin_routes(request: Request) -> Response:
        return JSONResponse({"routes": rt.live_weights()})

    def render(err: GatewayError) -> Response:
        return Response(err.json_bytes(), status_code=err.status, media_type="application/json", headers=err.headers)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return render(exc)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = ErrorKind.NOT_FOUND if status == 404 else ErrorKind.INVALID_REQUEST
        return render(GatewayError(kind, f"Unknown path or method: {request.method} {request.url.path}.", code="unknown_url", status=status))

    routes = [
        HttpRoute("/v1/models", list_models, methods=["GET"]),
        HttpRoute("/v1/responses/{response_id}", get_response, methods=["GET"]),
        HttpRoute("/v1/models/{model:path}", get_model, methods=["GET"]),
        HttpRoute("/healthz", healthz, methods=["GET"]),
        HttpRoute("/readyz", readyz, methods=["GET"]),
        HttpRoute("/metrics", metrics, methods=["GET"]),
        HttpRoute("/admin/reload", admin_reload, methods=["POST"]),
        HttpRoute("/admin/routes", admin_routes, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={GatewayError: on_gateway_error, 404: not_found, 405: not_found})
    return app


class Gatehouse:
    """The ASGI callable: lifespan plus the middleware stack."""

    def __init__(self, settings: Settings, config_path: Path | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 span_exporter: Any = None) -> None:
        self.runtime = rt = Runtime(settings, config_path, transport, span_exporter)
        self.starlette = build_starlette(rt)
        self.stack: ASGIApp = RequestIdAndErrors(Authenticate(RateLimit(Budget(Dispatch(rt, self._fallback), rt), rt), rt), rt)
        if settings.console.enabled:
            from gateway.console import console_routes

            self.starlette.router.routes.extend(console_routes(self))

    async def _fallback(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.starlette(scope, receive, send)  # type: ignore[arg-type]  # our Send takes dict, Starlette's MutableMapping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.stack(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.runtime.startup()
                    for r in self.runtime.extra_routes:
                        self.starlette.router.routes.append(r)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                try:
                    await self.runtime.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, *, config_path: str | Path | None = None, transport: httpx.AsyncBaseTransport | None = None,
               span_exporter: Any = None) -> Gatehouse:
    """``span_exporter``: an OpenTelemetry ``SpanExporter`` that turns tracing on without an endpoint (tests)."""
    return Gatehouse(settings, Path(config_path) if config_path else None, transport, span_exporter)

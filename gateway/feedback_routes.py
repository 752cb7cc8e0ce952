"""``POST /v1/feedback``: feedback on logged requests, behind the gateway's auth, counted in metrics.

The store and validation are plain storage in the bottom layer (``gatehouse_core.feedback``,
also read by tuning's dataset builds); this module only serves them, and renders every
refusal through the gateway's one error table. Request ids are resolved through the traffic
log (recent records in memory, older ones from the JSONL file or the Redis stream), so
feedback works with either sink and on any replica.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatehouse_core.feedback import FeedbackError, FeedbackStore, LookupRecord, submit
from gateway.errors import ErrorKind, GatewayError


def as_gateway_error(e: FeedbackError) -> GatewayError:
    kind = ErrorKind.NOT_FOUND if e.status == 404 else ErrorKind.INVALID_REQUEST
    return GatewayError(kind, e.message, param=e.param, code=e.code, status=e.status)


def feedback_route(store: FeedbackStore, lookup_record: LookupRecord, on_result: Any = None) -> Route:
    """The route; ``on_result(status)`` is called with the status of every answer."""

    def refuse(err: GatewayError) -> Response:
        if on_result is not None:
            on_result(err.status)
        return err.response()

    async def post_feedback(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return refuse(GatewayError(ErrorKind.INVALID_REQUEST, "The body is not valid JSON."))
        caller = request.scope.get("state", {}).get("caller")
        try:
            item = await submit(store, lookup_record, body, caller.tenant if caller is not None else None)
        except FeedbackError as e:
            return refuse(as_gateway_error(e))
        if on_result is not None:
            on_result(201)
        return JSONResponse({"id": item.id, "object": "feedback", "request_id": item.request_id, "created_at": int(item.created_at)}, status_code=201)

    return Route("/v1/feedback", post_feedback, methods=["POST"])


async def routes(rt: Any) -> list[Route]:
    s = rt.settings
    store = FeedbackStore(s.resolve_path(s.registry.path))
    rt.on_shutdown.append(store.close)
    counter = rt.metrics.counter("feedback_total", "Feedback received on logged requests, by outcome", ("result",))

    async def lookup(request_id: str) -> dict[str, Any] | None:
        return await rt.traffic.lookup(request_id) if rt.traffic is not None else None

    def count(status: int) -> None:
        counter.labels("stored" if status == 201 else f"rejected_{status}").inc()

    return [feedback_route(store, lookup, count)]

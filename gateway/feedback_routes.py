"""``POST /v1/feedback``: tuning.feedback's route, behind the gateway's auth, counted in metrics.

Request ids are resolved through the traffic log (recent records in memory, older ones
from the JSONL file or the Redis stream), so feedback works with either sink and on any
replica.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tuning.feedback import FeedbackStore, feedback_routes


async def routes(rt: Any) -> list[Route]:
    s = rt.settings
    store = FeedbackStore(s.resolve_path(s.registry.path))
    rt.on_shutdown.append(store.close)
    counter = rt.metrics.counter("feedback_total", "Feedback received on logged requests, by outcome", ("result",))

    async def lookup(request_id: str) -> dict[str, Any] | None:
        return await rt.traffic.lookup(request_id) if rt.traffic is not None else None

    (inner,) = feedback_routes(store, lookup)

    async def post_feedback(request: Request) -> Response:
        response: Response = await inner.endpoint(request)
        counter.labels("stored" if response.status_code == 201 else f"rejected_{response.status_code}").inc()
        return response

    return [Route("/v1/feedback", post_feedback, methods=["POST"])]

"""The traffic record schema and the verdict type: what one request leaves behind.

Written by the gateway (one ``TrafficRecord`` per request, with the ``Verdict`` of every
check that ran), read by the eval monitor, dataset builders and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Verdict:
    """One check's outcome on one piece of text (a guardrail firing or not)."""

    rule: str
    check: str
    category: str
    score: float
    action: str  # block | flag | redact | shadow | pass
    direction: str  # input | output
    latency_ms: float = 0.0
    detail: dict[str, Any] | None = None  # e.g. recitation source and matched span offsets
    # how many texts this verdict stands for: a request's verdicts are aggregated per
    # (rule, check, direction), keeping the worst one, so a record grows with the policy
    count: int = 1


@dataclass(slots=True)
class TrafficRecord:
    """One typed record per request; later stages fill their fields in."""

    request_id: str
    ts_start: float
    endpoint: str
    ts_end: float = 0.0
    tenant: str | None = None
    key_id: str | None = None
    model: str | None = None  # public model name (route)
    target: str | None = None
    variant: str | None = None
    attempts: int = 0
    stream: bool = False
    status: int = 0
    error_kind: str | None = None
    error_message: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the upstream served from its cache
    finish_reason: str | None = None
    response_model: str | None = None  # the model the upstream says answered
    user: str | None = None
    # cost of this request in the price tables' currency (gateway.cost); None: no price configured
    cost: float | None = None
    cost_estimated: bool | None = None  # True: upstream reported no usage, tokens were counted by us
    currency: str | None = None
    trace_id: str | None = None  # OpenTelemetry trace id (hex) when tracing is on
    # filled by later stages
    prompt_id: str | None = None
    prompt_version: str | None = None
    policy_version: str | None = None
    grounding_index: str | None = None
    grounding_chunk_ids: list[str] | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    cache_hit: bool | None = None
    # only when config says so (traffic_log.log_bodies)
    request_body: Any = None
    response_body: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

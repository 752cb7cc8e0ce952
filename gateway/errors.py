"""One error type for the whole gateway and its one status table.

Every failure that reaches a client is a ``GatewayError``; the ASGI error layer
turns it into the OpenAI error body ``{"error": {"message", "type", "param",
"code"}}``. Only client mistakes map to 4xx; anything unexpected is a 500.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    BODY_TOO_LARGE = "body_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    LIMIT_EXCEEDED = "limit_exceeded"  # too many messages/inputs, a text too long, JSON too deep
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    CONTENT_POLICY = "content_policy"
    UPSTREAM_CLIENT = "upstream_client"  # upstream said 4xx: its message is passed on
    UPSTREAM_ERROR = "upstream_error"  # upstream 5xx after retries and fallbacks
    UPSTREAM_CONNECT = "upstream_connect"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CIRCUIT_OPEN = "circuit_open"
    UNAVAILABLE = "unavailable"  # a dependency (Redis, a model) is down
    OVERLOADED = "overloaded"  # guardrail capacity exhausted: shed with Retry-After, never pass unchecked
    INTERNAL = "internal"


# kind -> (HTTP status, OpenAI error "type", default code)
STATUS: dict[ErrorKind, tuple[int, str, str | None]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error", None),
    ErrorKind.AUTHENTICATION: (401, "authentication_error", "invalid_api_key"),
    ErrorKind.PERMISSION: (403, "permission_error", "model_not_allowed"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    ErrorKind.BODY_TOO_LARGE: (413, "invalid_request_error", "request_too_large"),
    ErrorKind.HEADERS_TOO_LARGE: (431, "invalid_request_error", "request_headers_too_large"),
    ErrorKind.LIMIT_EXCEEDED: (400, "invalid_request_error", "limit_exceeded"),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorKind.BUDGET_EXCEEDED: (429, "insufficient_quota", "budget_exceeded"),
    ErrorKind.CONTENT_POLICY: (400, "invalid_request_error", "content_policy_violation"),
    ErrorKind.UPSTREAM_CLIENT: (400, "invalid_request_error", None),
    ErrorKind.UPSTREAM_ERROR: (502, "api_error", "upstream_error"),
    ErrorKind.UPSTREAM_CONNECT: (502, "api_error", "upstream_connect_error"),
    ErrorKind.UPSTREAM_TIMEOUT: (504, "api_error", "upstream_timeout"),
    ErrorKind.CIRCUIT_OPEN: (503, "api_error", "circuit_open"),
    ErrorKind.UNAVAILABLE: (503, "api_error", "service_unavailable"),
    ErrorKind.OVERLOADED: (503, "api_error", "overloaded"),
    ErrorKind.INTERNAL: (500, "api_error", "internal_error"),
}
assert set(STATUS) == set(ErrorKind), "every ErrorKind needs a status"


class GatewayError(Exception):
    """A failure with a kind (-> status), a message for the client and the offending param."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        default_status, self.type, default_code = STATUS[kind]
        self.code = code if code is not None else default_code
        # upstream 4xx keep their own status (401 stays 401, 422 stays 422)
        self.status = status if status is not None else default_status
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        err.update(self.extra)
        return {"error": err}

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def anthropic_body(self) -> dict[str, Any]:
        """The same error in Anthropic's shape (the ``/v1/messages`` door): its ``type`` from
        the status this table gave, our ``code``/``param``/extras alongside."""
        err: dict[str, Any] = {"type": anthropic_type(self.status), "message": self.message}
        if self.code is not None:
            err["code"] = self.code
        if self.param is not None:
            err["param"] = self.param
        err.update(self.extra)
        return {"type": "error", "error": err}

    def json_bytes_for(self, door: str | None) -> bytes:
        return orjson.dumps(self.anthropic_body()) if door == "messages" else self.json_bytes()

    def response(self) -> Response:
        """The error as a Starlette response, for routes that answer it themselves."""
        return Response(self.json_bytes(), status_code=self.status, media_type="application/json", headers=self.headers)


Handler = Callable[[Request], Awaitable[Response]]


def renders_errors(handler: Handler) -> Handler:
    """A route handler whose ``GatewayError`` becomes the table's response wherever the
    route is mounted: the app's router renders it too, but a route list may also be
    served on its own (tests mount one in a bare Starlette app)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as err:
            return err.response()

    return wrapped


# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param)

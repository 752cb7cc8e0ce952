"""Bounds on what one request may ask of the gateway (``limits:`` in the config).

Every cap answers with the door's error shape through ``gateway.errors``: 413 for a
body over its limit, 431 for request headers over theirs, 400 ``limit_exceeded`` for
too many messages or inputs, a text too long to check, a JSON field nested too deep
or a model name too long. The depth check walks the parsed body with an explicit
stack, before anything recursive (serialisers, validation, providers) touches it.

Body limits cover every endpoint: the inference doors use ``server.max_body_bytes``,
everything else (admin, prompts admin, feedback, keys) ``limits.max_control_body_bytes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import LimitSettings
from gateway.errors import ErrorKind, GatewayError
from gateway.model import Request, ToolResult
from gateway.protocols.chat import content_param

Receive = Callable[[], Awaitable[dict[str, Any]]]


def too_large(limit: int) -> GatewayError:
    return GatewayError(ErrorKind.BODY_TOO_LARGE, f"Request body is larger than the limit of {limit} bytes.")


def check_headers(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    size = sum(len(k) + len(v) + 4 for k, v in headers)
    if size > limit:
        raise GatewayError(
            ErrorKind.HEADERS_TOO_LARGE,
            f"Request headers are {size} bytes; the limit is {limit} (limits.max_header_bytes).",
        )


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def bounded_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes arrived."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return msg

    return wrapped


def exceeded(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.LIMIT_EXCEEDED, message, param=param)


def deepest(value: Any, limit: int) -> str | None:
    """The path of a field nested deeper than ``limit`` levels, or None. Iterative, so a
    body nested 1,000 levels deep cannot exhaust the stack here."""
    # only containers are pushed, and a node's path is a chain of (parent, key) links
    # formatted only when it is the answer: the common body costs a walk, not a string per field
    if not isinstance(value, (dict, list)):
        return None
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]
    while stack:
        node, depth, chain = stack.pop()
        if depth > limit:
            return _path(chain) or "<body>"
        if type(node) is dict:
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1, (chain, k)))
        else:
            for i, v in enumerate(node):
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1, (chain, i)))
    return None


def _path(chain: Any) -> str:
    keys: list[Any] = []
    while chain is not None:
        chain, key = chain
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def check_depth(value: Any, limit: int, param: str | None = None) -> None:
    where = deepest(value, limit)
    if where is not None:
        name = f"{param}.{where}" if param and where != "<body>" else (param or where)
        top = name.split(".")[0].split("[")[0]
        raise exceeded(f"'{name}' is nested more than {limit} levels deep (limits.max_json_depth).", top)


def _check_text(text: Any, limit: int, param: str) -> None:
    if isinstance(text, str) and len(text) > limit:
        raise exceeded(f"'{param}' is {len(text)} characters; the limit is {limit} per text (limits.max_text_chars).", param)


def _check_count(n: int, limits: LimitSettings) -> None:
    if n > limits.max_messages:
        raise exceeded(f"'messages' has {n} items; the limit is {limits.max_messages} (limits.max_messages).", "messages")


def check_texts(n: int, limits: LimitSettings, param: str) -> None:
    """The cap on the texts one request sends through the guardrail checks (all its turns, parts or
    inputs): a request the scorer cannot check within the check timeout would only time out."""
    if n > limits.max_checked_texts:
        raise exceeded(
            f"'{param}' has {n} texts to check; the limit is {limits.max_checked_texts} per request "
            "(limits.max_checked_texts): split the request.",
            param,
        )


def check_messages(req: Request, limits: LimitSettings) -> None:
    """The caps on a chat request's turns (any door), on the neutral model: the number of turns,
    parts per turn, characters per text."""
    _check_count(len(req.messages), limits)
    for i, m in enumerate(req.messages):
        parts = m.parts[0].parts if m.role == "tool" and m.parts and isinstance(m.parts[0], ToolResult) else m.parts
        if not m.plain and len(parts) > limits.max_inputs:
            raise exceeded(f"'messages[{i}].content' has {len(parts)} parts; the limit is {limits.max_inputs} (limits.max_inputs).", f"messages[{i}].content")
        for path, text in m.texts():
            if len(text) > limits.max_text_chars:
                _check_text(text, limits.max_text_chars, content_param(i, m, path) + ("" if m.plain else ".text"))


# the doors whose body carries ``messages`` (counted before anything walks or translates them)
_MESSAGE_DOORS = frozenset({"chat", "messages"})


def check_request(endpoint: str, body: Any, limits: LimitSettings) -> None:
    """The caps on an inference request body; run right after parsing, before validation.

    Cheap caps first (model name, the number of turns or inputs, each input's length: a
    look at the top level), then the depth walk, which visits every container of the body:
    a 10,000-message request is refused on its count without being walked or translated."""
    check_counts(endpoint, body, limits)
    check_depth(body, limits.max_json_depth)


async def acheck_request(endpoint: str, body: Any, limits: LimitSettings, size: int) -> None:
    """``check_request`` with the depth walk in a worker thread when the body is large (as
    ``gateway.asgi.parse_json`` parses it), so a big body is not walked on the event loop."""
    from gateway.asgi import LARGE_BODY

    check_counts(endpoint, body, limits)
    if size < LARGE_BODY:
        check_depth(body, limits.max_json_depth)
    else:
        await asyncio.to_thread(check_depth, body, limits.max_json_depth)


def check_counts(endpoint: str, body: Any, limits: LimitSettings) -> None:
    """The caps that look at the top level of the body only: model name, counts, input lengths."""
    if not isinstance(body, dict):
        return
    model = body.get("model")
    if isinstance(model, str) and len(model) > limits.max_model_chars:
        raise exceeded(f"'model' is {len(model)} characters; the limit is {limits.max_model_chars} (limits.max_model_chars).", "model")
    if endpoint in _MESSAGE_DOORS:
        msgs = body.get("messages")
        if isinstance(msgs, list):  # the count before anything is built per turn; the rest: check_messages
            _check_count(len(msgs), limits)
        return
    key = "prompt" if endpoint == "completions" else "input"
    value = body.get(key)
    if isinstance(value, str):
        _check_text(value, limits.max_text_chars, key)
    elif isinstance(value, list):
        if len(value) > limits.max_inputs:
            raise exceeded(f"'{key}' has {len(value)} items; the limit is {limits.max_inputs} (limits.max_inputs).", key)
        for i, v in enumerate(value):
            _check_text(v, limits.max_text_chars, f"{key}[{i}]")

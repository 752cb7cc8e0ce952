"""OpenAI-shaped handlers: translate HTTP into a ``RequestContext`` and back.

Validation is deliberately hand-written for the few fields the gateway acts on
(each error names its field); everything else in the body is passed through to
the upstream untouched, so new OpenAI parameters work without a release.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway import limits
from gateway.asgi import Receive, Send
from gateway.asgi import read_body as read_body
from gateway.config import LimitSettings
from gateway.cost import COST_HEADER, STREAM_TEXT, format_cost, request_text
from gateway.doors import DOOR, StreamEncoder
from gateway.errors import ErrorKind, GatewayError, invalid
from gateway.model import END, Chunk, Reply, Request, Usage
from gateway.protocols import chat
from gateway.protocols.chat import check_sampling, chunk_bytes, expect, type_name
from gateway.providers import StreamReply, UpstreamFailure
from gateway.routing import Attempt
from gateway.types import Endpoint, RequestContext, StreamBlocked, StreamFilter

if TYPE_CHECKING:
    from gateway.runtime import Runtime


ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


# ---- validation ------------------------------------------------------------------

def validate(endpoint: Endpoint, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object, got {type_name(body)}.")
    model = expect(body, "model", (str,), "a string", required=True)
    if not model:
        raise invalid("'model' must not be empty.", "model")
    if endpoint == "embeddings":
        inp = body.get("input")
        if inp is None:
            raise invalid("Missing required parameter: 'input'.", "input")
        if not isinstance(inp, (str, list)) or (isinstance(inp, list) and not inp):
            raise invalid("Invalid 'input': expected a string or a non-empty array.", "input")
        fmt = expect(body, "encoding_format", (str,), "a string")
        if fmt is not None and fmt not in ("float", "base64"):
            raise invalid(f"Invalid value for 'encoding_format': {fmt!r}; supported: 'float', 'base64'.", "encoding_format")
        dims = expect(body, "dimensions", (int,), "an integer")
        if dims is not None and dims < 1:
            raise invalid("'dimensions' must be >= 1.", "dimensions")
        return body
    check_sampling(body)
    if endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid("Missing required parameter: 'prompt'.", "prompt")
        if not isinstance(prompt, (str, list)):
            raise invalid(f"Invalid type for 'prompt': expected a string or array, but got {type_name(prompt)}.", "prompt")
        return body
    msgs = expect(body, "messages", (list,), "an array", required=True)
    if not msgs:
        raise invalid("'messages' must contain at least one message.", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise invalid(f"Invalid type for 'messages[{i}]': expected an object, but got {type_name(m)}.", f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(
                f"Invalid value for 'messages[{i}].role': {role!r}; supported: {', '.join(sorted(ROLES))}.", f"messages[{i}].role"
            )
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid(
                f"Invalid type for 'messages[{i}].content': expected a string or array, but got {type_name(content)}.",
                f"messages[{i}].content",
            )
    return body


# ---- usage bookkeeping -----------------------------------------------------------

def take_usage(ctx: RequestContext, usage: Usage | None) -> None:
    if usage is not None:
        rec = ctx.record
        rec.prompt_tokens = usage.prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.total_tokens = usage.total_tokens
        if usage.cached_tokens is not None:
            rec.cached_tokens = usage.cached_tokens


def headers_list(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ctx.response_headers.items()]


def chat_door(body: Any, caps: LimitSettings) -> Request:
    """The Chat Completions door: validate the body, read it into the neutral request, cap it."""
    validate("chat", body)
    req = chat.request_in(body)
    limits.check_messages(req, caps)
    return req


async def prepare(rt: Runtime, ctx: RequestContext, endpoint: Endpoint) -> Any:
    """Validate, resolve the route and run the stages' inbound hooks; returns the Route."""
    req = ctx.request
    if req is None:
        validate(endpoint, ctx.body)
    model = ctx.model
    ctx.record.model = model
    route = ctx.route = rt.router.get(model)
    if not ctx.caller.may_use(model):
        raise GatewayError(ErrorKind.PERMISSION, f"API key {ctx.caller.key_id} may not use model `{model}`.", param="model")
    ctx.record.stream = ctx.stream
    user = req.user if req is not None else ctx.body.get("user")
    ctx.record.user = user if isinstance(user, str) else None
    if rt.log_bodies and req is None:  # a neutral request is logged as the stages leave it (below)
        ctx.record.request_body = ctx.body
    if rt.policy_source is not None:
        # known before any stage runs, so the response cache can key on it (the guardrail
        # stage re-stamps it from its own per-request snapshot)
        ctx.record.policy_version = rt.policy_source.policy_version
    try:
        for stage in rt.stages:
            # a stage that answered (a cache hit) skips the rest, except stages that must see
            # every request (input guardrails: a policy tightened after caching still applies)
            if ctx.short_circuit is None or stage.runs_on_short_circuit:
                await stage.on_request(ctx)
    finally:
        if rt.log_bodies and req is not None:
            # the request as the stages left it (prompt rendered, passages in, text redacted)
            ctx.record.request_body = chat.request_out(req)
    return route


def _sticky(ctx: RequestContext) -> str | None:
    user = ctx.request.user if ctx.request is not None else ctx.body.get("user")
    return ctx.headers.get("x-gatehouse-session") or (user if isinstance(user, str) else None)


async def handle_complete(rt: Runtime, ctx: RequestContext, endpoint: Endpoint, send: Send, receive: Receive) -> None:
    route = await prepare(rt, ctx, endpoint)
    if ctx.stream and endpoint != "embeddings":
        await handle_stream(rt, ctx, endpoint, route, send, receive)
        return
    att = Attempt()
    answer: Reply | dict[str, Any]
    if ctx.short_circuit is not None:
        answer = ctx.short_circuit
        ctx.record.target = "cache"
    else:
        try:
            payload = ctx.request if ctx.request is not None else ctx.body
            answer = await rt.router.complete(route, endpoint, payload, _sticky(ctx), att)
        finally:
            _record_attempt(ctx, att)
    if not isinstance(answer, Reply):  # embeddings: the upstream's JSON, passed on
        await _send_json(rt, ctx, answer, send)
        return
    reply = answer
    for stage in reversed(rt.stages):
        reply = await stage.on_response(ctx, reply)
    if not ctx.record.cache_hit:  # a cached answer used no upstream tokens
        take_usage(ctx, reply.usage)
    ctx.record.finish_reason = reply.finish_reason
    if reply.model:
        ctx.record.response_model = reply.model
    cost = settle_cost(rt, ctx, reply)
    if cost is not None and rt.meter.header:
        ctx.response_headers[COST_HEADER] = format_cost(cost)
    door = ctx.state.get(DOOR)
    if door is None:
        out = chat.reply_out(reply, "text_completion" if ctx.endpoint == "completions" else "chat.completion")
        body = orjson.dumps(out)
        if rt.log_bodies:
            ctx.record.response_body = out
    else:
        body = door.render(ctx, reply)
        if rt.log_bodies:
            ctx.record.response_body = chat.reply_out(reply)
    if door is not None:  # before the client has the reply (a stored response is then retrievable)
        await door.after(rt, ctx)
    ctx.record.status = 200
    await send({"type": "http.response.start", "status": 200, "headers": [*JSON_HEADERS, *headers_list(ctx)]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(rt: Runtime, ctx: RequestContext, reply: dict[str, Any], send: Send) -> None:
    """A reply that is not a chat reply (embeddings) goes out as the upstream's JSON."""
    if not ctx.record.cache_hit:
        take_usage(ctx, chat.usage_in(reply.get("usage")))
    if isinstance(reply.get("model"), str):
        ctx.record.response_model = reply["model"]
    cost = settle_cost(rt, ctx)
    if cost is not None and rt.meter.header:
        ctx.response_headers[COST_HEADER] = format_cost(cost)
    if rt.log_bodies:
        ctx.record.response_body = reply
    ctx.record.status = 200
    await send({"type": "http.response.start", "status": 200, "headers": [*JSON_HEADERS, *headers_list(ctx)]})
    await send({"type": "http.response.body", "body": orjson.dumps(reply)})


def settle_cost(rt: Runtime, ctx: RequestContext, reply: Reply | None = None) -> float | None:
    """The one place a request's cost is settled (idempotent: a whole reply settles before its
    headers, streams and failures when the handler is done); budgets and the record read it."""
    return rt.meter.settle(ctx.record, ctx, reply)


def _record_attempt(ctx: RequestContext, att: Attempt) -> None:
    ctx.upstream_seconds += att.upstream_seconds
    ctx.record.attempts = att.attempts
    if att.arm is not None:
        ctx.record.target = att.arm.name
        ctx.record.variant = att.arm.variant
        ctx.response_headers["x-gatehouse-target"] = att.arm.name
        ctx.response_headers["x-gatehouse-variant"] = att.arm.variant


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def sse_error(message: str, code: str, extra: dict[str, Any] | None = None) -> bytes:
    err: dict[str, Any] = {"message": message, "type": "api_error", "param": None, "code": code}
    if extra:
        err.update(extra)
    return sse(orjson.dumps({"error": err}))


async def handle_stream(rt: Runtime, ctx: RequestContext, endpoint: Endpoint, route: Any, send: Send, receive: Receive) -> None:
    req = ctx.request
    upstream: Request | dict[str, Any]
    if req is not None:
        client_wants_usage = req.include_usage
        # ask for usage anyway so the record has token counts; the usage chunk is not forwarded
        # unless the client asked (client_wants_usage), and nothing reads the flag after this
        req.include_usage = True
        upstream = req
    else:
        body = ctx.body
        opts = body.get("stream_options") or {}
        client_wants_usage = bool(opts.get("include_usage"))
        upstream = body if client_wants_usage else {**body, "stream_options": {**opts, "include_usage": True}}
    att = Attempt()
    try:
        reply, first = await rt.router.open_stream(route, endpoint, upstream, _sticky(ctx), att)
    finally:
        _record_attempt(ctx, att)
    filters: list[StreamFilter] = [f for s in reversed(rt.stages) if (f := s.stream_filter(ctx)) is not None]
    rt.meter.track_stream(ctx)
    ctx.record.status = 200
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers_list(ctx)]})
    # one list of streamed text: the cost meter's (priced routes) when it keeps one
    texts: list[str] = ctx.state.get(STREAM_TEXT, [])
    door = ctx.state.get(DOOR)
    enc = door.encoder(ctx) if door is not None else None
    after = None if door is None else functools.partial(door.after, rt, ctx)
    pump = asyncio.ensure_future(_pump(ctx, reply, first, filters, client_wants_usage, send, texts, enc, after))
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        if pump not in done:
            # the client went away: stop reading, which closes the upstream request
            pump.cancel()
            ctx.record.error_kind = "client_disconnect"
            ctx.record.status = 499
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        else:
            pump.result()
    finally:
        watch.cancel()
        await reply.aclose()
        _stream_record(rt, ctx, "".join(texts))


def _stream_record(rt: Runtime, ctx: RequestContext, text: str) -> None:
    """Usage and (with log_bodies) the assembled reply of a stream, for the traffic record.

    Usage comes from the upstream's ``stream_options.include_usage`` chunk when it sends one;
    otherwise it is counted with the cost meter's estimating tokenizer and marked ``usage_estimated``."""
    rec = ctx.record
    if rec.total_tokens is None and rec.prompt_tokens is not None and rec.completion_tokens is not None:
        rec.total_tokens = rec.prompt_tokens + rec.completion_tokens  # upstream gave the parts, not the sum
    if rec.total_tokens is None:
        sent = ctx.request.text() if ctx.request is not None else request_text(ctx.body)
        rec.prompt_tokens, rec.completion_tokens = rt.meter.estimate_tokens(sent), rt.meter.estimate_tokens(text)
        rec.total_tokens = rec.prompt_tokens + rec.completion_tokens
        rec.extra["usage_estimated"] = True
    if rt.log_bodies and rec.response_body is None:
        msg = {"role": "assistant", "content": text} if ctx.endpoint == "chat" else None
        choice = {"index": 0, "finish_reason": rec.finish_reason, **({"message": msg} if msg else {"text": text})}
        rec.response_body = {"object": "chat.completion" if msg else "text_completion", "streamed": True, "choices": [choice],
                             "usage": {"prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
                                       "total_tokens": rec.total_tokens}}


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _pump(
    ctx: RequestContext,
    reply: StreamReply,
    first: list[Chunk],
    filters: list[StreamFilter],
    client_wants_usage: bool,
    send: Send,
    streamed: list[str],
    enc: StreamEncoder | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Relay upstream events; each upstream read becomes one client write.

    The Chat door relays the upstream's own event bytes when no filter changed them; another
    door's ``enc`` renders every core chunk in its protocol's events."""
    rec = ctx.record
    batches = reply.events
    batch: list[Chunk] | None = first
    clock = time.perf_counter
    out: list[bytes] = []

    async def flush() -> None:
        if out:
            if rec.ttft_ms is None:
                rec.ttft_ms = (clock() - ctx.t0) * 1000
            data = b"".join(out)
            out.clear()
            await send({"type": "http.response.body", "body": data, "more_body": True})

    kind = "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion"

    async def release(chunks: list[Chunk]) -> None:
        for c in chunks:
            out.append(sse(chunk_bytes(c, kind)) if enc is None else enc.chunk(c))

    try:
        done = False
        while batch is not None and not done:
            for chunk in batch:
                if chunk is END:
                    for f in filters:
                        await release(await f.finish())
                    out.append(b"data: [DONE]\n\n" if enc is None else enc.done(rec.completion_tokens))
                    if after is not None:  # the door's work on the finished reply, before its last event
                        await after()
                    done = True
                    break
                if rec.response_model is None and chunk.model:
                    rec.response_model = chunk.model
                streamed.append(chunk.text)
                if chunk.usage is not None:
                    take_usage(ctx, chunk.usage)
                    if not chunk.choices and not client_wants_usage:
                        continue
                fr = chunk.finish_reason
                if fr:
                    rec.finish_reason = fr
                if filters:
                    pending = [chunk]
                    for f in filters:
                        nxt: list[Chunk] = []
                        for c in pending:
                            nxt.extend(await f.feed(c))
                        pending = nxt
                    await release(pending)
                    continue
                if enc is not None:
                    out.append(enc.chunk(chunk))
                elif chunk.raw is not None:  # the Chat door relays the upstream's own event
                    out.append(b"data: " + chunk.raw + b"\n\n")
                else:
                    out.append(sse(chunk_bytes(chunk, kind)))
            await flush()
            if done:
                break
            t0 = clock()
            try:
                batch = await batches.__anext__()
            except StopAsyncIteration:
                batch = None
                # upstream ended without [DONE]: still flush held-back text
                for f in filters:
                    await release(await f.finish())
                if enc is not None:
                    out.append(enc.done(rec.completion_tokens))
                if after is not None:
                    await after()
                await flush()
            finally:
                ctx.upstream_seconds += clock() - t0
    except StreamBlocked as blk:
        rec.finish_reason = "content_filter"
        rec.error_kind = "content_filter"
        rec.error_message = blk.message
        stop: dict[str, Any] = {"id": "gatehouse-filter", "object": "chat.completion.chunk" if ctx.endpoint == "chat" else "text_completion",
                "created": int(time.time()), "model": ctx.model,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}]}
        if enc is not None:
            out.append(enc.blocked(blk.message, {"code": "content_policy_violation", "rule": blk.rule, "category": blk.category, **blk.detail}))
        else:
            out.append(sse(orjson.dumps(stop)))
            out.append(sse_error(blk.message, "content_policy_violation", {"rule": blk.rule, "category": blk.category, **blk.detail}))
        await flush()
    except UpstreamFailure as f:
        rec.error_kind = "upstream_stream_broken"
        rec.error_message = f.message
        rec.status = 502
        await flush()
        msg = f"upstream stream broke: {f.message}"
        out.append(sse_error(msg, "upstream_stream_broken") if enc is None else enc.broken(msg))
        await flush()
    await send({"type": "http.response.body", "body": b"", "more_body": False})

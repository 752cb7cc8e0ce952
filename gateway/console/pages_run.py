"""Playground and Side by side: requests through the gateway's own stack, streamed to the page.

The run endpoints answer NDJSON (one event a line: ``{"side", "type", ...}``), which
``static/console.js`` reads with ``fetch`` and writes into the page as text (never as
HTML). A preference picked on Side by side is stored through ``/v1/feedback``
(``preferred_over``), the same API and store that tuning and AutoSxS read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.console.runner import call_route, run_chat
from gateway.console.store import Session
from gateway.console.web import SECURITY_HEADERS, Console, ConsoleError, Form, action, page
from gateway.types import Caller

MAX_TOKENS = 4096


def caller_for(s: Session) -> Caller:
    """Console requests run as the user's tenant (or ``console``), with a key id naming the user."""
    return Caller(tenant=s.tenant or "console", key_id=f"console:{s.user}")


def _chat_routes(c: Console) -> list[str]:
    return sorted(n for n, r in c.rt.router.routes.items() if "chat" in r.capabilities)


def prompt_registry(c: Console) -> Any:
    reg = getattr(c.rt.services, "prompt_registry", None)
    if reg is None:
        stage = next((st for st in c.rt.stages if st.name == "prompts"), None)
        reg = getattr(stage, "registry", None)
    return reg


async def _prompt_choice(c: Console, pid: str, ref: str) -> tuple[Any, list[Any], dict[str, int]]:
    """The chosen prompt version (or None), all versions and labels of ``pid``."""
    reg = prompt_registry(c)
    if reg is None or not pid:
        return None, [], {}
    versions = await reg.versions(pid)
    if not versions:
        raise ConsoleError(404, f"No prompt {pid!r}.")
    labels = await reg.labels(pid)
    chosen = versions[-1]
    if ref.startswith("v") and ref[1:].isdigit():
        chosen = next((v for v in versions if v.version == int(ref[1:])), chosen)
    elif ref in labels:
        chosen = next((v for v in versions if v.version == labels[ref]), chosen)
    return chosen, versions, labels


async def playground(c: Console, request: Request, s: Session) -> Response:
    q = request.query_params
    reg = prompt_registry(c)
    prompts = [p.id for p in await reg.list()] if reg is not None else []
    pid, ref = q.get("prompt", ""), q.get("ref", "")
    chosen, versions, labels = await _prompt_choice(c, pid, ref)
    return c.render(request, "playground.html", active="playground", routes=_chat_routes(c), route=q.get("route", ""),
                    prompts=prompts, pid=pid, ref=ref or (f"label:{next(iter(labels))}" if labels else ""),
                    chosen=chosen, versions=versions, labels=labels)


def _float(form: Form, name: str, lo: float, hi: float) -> float | None:
    v = form.get(name).strip()
    if not v:
        return None
    try:
        f = float(v)
    except ValueError:
        raise ConsoleError(400, f"{name} must be a number.") from None
    if not lo <= f <= hi:
        raise ConsoleError(400, f"{name} must be between {lo:g} and {hi:g}.")
    return f


def build_body(c: Console, form: Form, route: str, prompt_ref: str) -> dict[str, Any]:
    """An OpenAI chat body from the form; ``prompt_ref`` is ``vN``, ``label:NAME`` or empty."""
    if route not in c.rt.router.routes:
        raise ConsoleError(400, "Choose a route (model) to send the request to.")
    messages: list[dict[str, str]] = []
    if form.get("system").strip():
        messages.append({"role": "system", "content": form.get("system")})
    if form.get("message").strip():
        messages.append({"role": "user", "content": form.get("message")})
    body: dict[str, Any] = {"model": route, "messages": messages}
    pid = form.get("prompt_id").strip()
    if pid:
        prompt: dict[str, Any] = {"id": pid, "variables": form.items("var_")}
        if prompt_ref.startswith("v") and prompt_ref[1:].isdigit():
            prompt["version"] = int(prompt_ref[1:])
        elif prompt_ref.startswith("label:"):
            prompt["label"] = prompt_ref[6:]
        body["prompt"] = prompt
    elif not messages:
        raise ConsoleError(400, "Write a message (or choose a prompt).")
    temp = _float(form, "temperature", 0, 2)
    if temp is not None:
        body["temperature"] = temp
    top_p = _float(form, "top_p", 0, 1)
    if top_p is not None:
        body["top_p"] = top_p
    mt = _float(form, "max_tokens", 1, MAX_TOKENS)
    if mt is not None:
        body["max_tokens"] = int(mt)
    return body


def _line(side: str, kind: str, payload: dict[str, Any]) -> bytes:
    if "type" in payload:  # an error body's own type (invalid_request_error) must not hide the event's
        payload = {**payload, "error_type": payload["type"]}
    return orjson.dumps({**payload, "side": side, "type": kind}, default=str) + b"\n"


async def _merge(runs: dict[str, AsyncIterator[tuple[str, dict[str, Any]]]]) -> AsyncIterator[bytes]:
    """Events of several runs as they come, each tagged with its side."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def pump(side: str, it: AsyncIterator[tuple[str, dict[str, Any]]]) -> None:
        try:
            async for kind, payload in it:
                await queue.put(_line(side, kind, payload))
        except Exception as exc:  # shown in the page, never a silent stop
            await queue.put(_line(side, "error", {"message": f"{type(exc).__name__}: {exc}"}))
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(side, it)) for side, it in runs.items()]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is None:
                left -= 1
                continue
            yield item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


def _stream(runs: dict[str, AsyncIterator[tuple[str, dict[str, Any]]]]) -> StreamingResponse:
    headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
    return StreamingResponse(_merge(runs), media_type="application/x-ndjson", headers=headers)


async def run_playground(c: Console, request: Request, s: Session, form: Form) -> Response:
    body = build_body(c, form, form.get("route"), form.get("prompt_ref"))
    return _stream({"a": run_chat(c.gh.stack, caller_for(s), body)})


async def sxs(c: Console, request: Request, s: Session) -> Response:
    q = request.query_params
    reg = prompt_registry(c)
    prompts = [p.id for p in await reg.list()] if reg is not None else []
    pid = q.get("prompt", "")
    chosen, versions, labels = await _prompt_choice(c, pid, q.get("ref_a", ""))
    return c.render(request, "sxs.html", active="sxs", routes=_chat_routes(c), prompts=prompts, pid=pid, chosen=chosen,
                    versions=versions, labels=labels, route_a=q.get("route_a", ""), route_b=q.get("route_b", ""))


async def run_sxs(c: Console, request: Request, s: Session, form: Form) -> Response:
    caller = caller_for(s)
    route_a, route_b = form.get("route_a"), form.get("route_b") or form.get("route_a")
    body_a = build_body(c, form, route_a, form.get("ref_a"))
    body_b = build_body(c, form, route_b, form.get("ref_b") or form.get("ref_a"))
    if body_a == body_b:
        raise ConsoleError(400, "Both sides are the same: choose two routes or two prompt versions.")
    return _stream({"a": run_chat(c.gh.stack, caller, body_a), "b": run_chat(c.gh.stack, caller, body_b)})


async def prefer(c: Console, request: Request, s: Session, form: Form) -> Response:
    id_a, id_b, pick = form.get("id_a"), form.get("id_b"), form.get("pick")
    winner, loser = (id_a, id_b) if pick == "a" else (id_b, id_a)
    if not id_a or not id_b or pick not in ("a", "b"):
        raise ConsoleError(400, "Run both sides first, then pick the better answer.")
    fb = {"request_id": winner, "preferred_over": loser, "user": s.user, "metadata": {"source": "console-sxs"}}
    if form.get("comment").strip():
        fb["comment"] = form.get("comment").strip()
    status, reply = await call_route(c.gh.stack, "/v1/feedback", caller_for(s), fb)
    ok = status == 201
    await c.audit(s, "sxs-preference", winner, after={"preferred_over": loser, "feedback": reply.get("id"), "status": status}, ok=ok)
    if not ok:
        err = reply.get("error") or {}
        raise ConsoleError(status if 400 <= status < 500 else 502, f"The preference was not stored: {err.get('message', reply)}")
    return c.render(request, "preferred.html", active="sxs", winner=winner, loser=loser, feedback_id=reply.get("id"))


def routes(c: Console) -> list[tuple[str, list[str], Any]]:
    return [
        ("/playground", ["GET"], page(c, playground)),
        ("/playground/run", ["POST"], action(c, run_playground, name="playground-run")),
        ("/sxs", ["GET"], page(c, sxs)),
        ("/sxs/run", ["POST"], action(c, run_sxs, name="sxs-run")),
        ("/sxs/prefer", ["POST"], action(c, prefer, name="sxs-preference")),
    ]

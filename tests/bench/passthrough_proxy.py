"""The pass-through floor for ``bench_gateway.py``: the least a Python proxy can do.

A bare Starlette app that forwards ``POST /v1/chat/completions`` bytes to one
upstream and relays the reply: whole for JSON, chunk by chunk for SSE. No
parsing, auth, logging or metrics, so its CPU per request is what the ASGI
server plus an HTTP client cost; the gateway's own work is measured against it.

The upstream client is selectable, because that choice dominates the floor:

- ``--client aiohttp``: one ``aiohttp.ClientSession`` (the gateway's default
  transport, via httpx-aiohttp);
- ``--client httpx``: one ``httpx.AsyncClient`` on httpx's own connection pool.

    python tests/bench/passthrough_proxy.py --upstream http://127.0.0.1:9000 --port 9100 --client aiohttp
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PATH = "/v1/chat/completions"
FORWARD = ("content-type", "authorization")


def build_app(upstream: str, client: str, max_connections: int = 512) -> Starlette:
    url = upstream.rstrip("/") + PATH
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client == "aiohttp":
            import aiohttp

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max_connections), timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
            )
            state["session"] = session
            try:
                yield
            finally:
                await session.close()
        else:
            import httpx

            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            hc = httpx.AsyncClient(limits=limits, timeout=60, trust_env=False)
            state["client"] = hc
            try:
                yield
            finally:
                await hc.aclose()

    def out_headers(request: Request) -> dict[str, str]:
        return {k: v for k in FORWARD if (v := request.headers.get(k)) is not None}

    async def via_aiohttp(request: Request) -> Response:
        body = await request.body()
        resp = await state["session"].post(url, data=body, headers=out_headers(request))
        ctype = resp.headers.get("content-type", "application/json")
        if not ctype.startswith("text/event-stream"):
            try:
                return Response(await resp.read(), status_code=resp.status, media_type=ctype)
            finally:
                resp.release()

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return StreamingResponse(relay(), status_code=resp.status, media_type=ctype)

    async def via_httpx(request: Request) -> Response:
        body = await request.body()
        hc = state["client"]
        resp = await hc.send(hc.build_request("POST", url, content=body, headers=out_headers(request)), stream=True)
        ctype = resp.headers.get("content-type", "application/json")
        if not ctype.startswith("text/event-stream"):
            try:
                return Response(await resp.aread(), status_code=resp.status_code, media_type=ctype)
            finally:
                await resp.aclose()

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), status_code=resp.status_code, media_type=ctype)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    handler = via_aiohttp if client == "aiohttp" else via_httpx
    return Starlette(
        routes=[Route(PATH, handler, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Minimal pass-through proxy (benchmark floor).")
    ap.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9000")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    args = ap.parse_args(argv)
    import uvicorn

    # same server settings as `gatehouse serve`, so only the app differs
    uvicorn.run(build_app(args.upstream, args.client), host=args.host, port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

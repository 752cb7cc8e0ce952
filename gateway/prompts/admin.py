"""Admin HTTP API for prompts, mounted by the app behind the admin-key check.

    GET  /admin/prompts                      -> {"data": [{id, latest, labels}]}
    GET  /admin/prompts/{id}                 -> {id, labels, versions: [...]}
    GET  /admin/prompts/{id}?version=3|label=production -> one version
    POST /admin/prompts                      body: a prompt document (JSON, same fields as the YAML file)
                                             -> 201 {version..., "created": true} (200 when unchanged)
    POST /admin/prompts/{id}/labels          body: {"label": "production", "version": 3}
                                             or {"label": "production", "rollback": true}
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import LimitSettings
from gateway.errors import ErrorKind, GatewayError, renders_errors
from gateway.limits import check_depth
from gateway.prompts.model import PromptFormatError, PromptRef, parse_spec
from gateway.prompts.registry import PromptNotFound, PromptRegistry
from gateway.prompts.store import PromptStoreError


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param)


def _not_found(message: str, param: str) -> GatewayError:
    return GatewayError(ErrorKind.NOT_FOUND, message, param=param, code="prompt_not_found")


async def _json(request: Request) -> Any:
    try:
        # orjson answers JSON nested past its limit with an error, not a RecursionError
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise PromptFormatError("the body must be JSON") from None
    check_depth(body, LimitSettings().max_json_depth)  # before anything recursive touches it
    return body


def admin_routes(registry: PromptRegistry) -> list[Route]:
    async def list_prompts(request: Request) -> JSONResponse:
        items = await registry.list()
        return JSONResponse({"data": [{"id": s.id, "latest": s.latest, "labels": s.labels} for s in items]})

    async def get_prompt(request: Request) -> JSONResponse:
        pid = request.path_params["prompt_id"]
        version, label = request.query_params.get("version"), request.query_params.get("label")
        try:
            if version is not None:
                if not version.isdigit():
                    raise _bad("version must be a positive integer", "version")
                return JSONResponse((await registry.get_version(pid, int(version))).to_dict())
            if label is not None:
                return JSONResponse((await registry.resolve(PromptRef(pid, label=label))).to_dict())
        except PromptNotFound as exc:
            raise _not_found(str(exc), "prompt_id") from None
        versions = await registry.versions(pid)
        if not versions:
            raise _not_found(f"prompt {pid!r} does not exist", "prompt_id")
        return JSONResponse(
            {"id": pid, "labels": await registry.labels(pid), "versions": [v.to_dict() for v in versions]}
        )

    async def push_prompt(request: Request) -> JSONResponse:
        try:
            spec = parse_spec(await _json(request), "body")
        except PromptFormatError as exc:
            raise _bad(str(exc)) from None
        pv, created = await registry.push(spec)
        return JSONResponse({**pv.to_dict(), "created": created}, 201 if created else 200)

    async def move_label(request: Request) -> JSONResponse:
        pid = request.path_params["prompt_id"]
        try:
            body = await _json(request)
        except PromptFormatError as exc:
            raise _bad(str(exc)) from None
        if not isinstance(body, dict) or not isinstance(body.get("label"), str):
            raise _bad('body must be {"label": ..., "version": N} or {"label": ..., "rollback": true}', "label")
        label = body["label"]
        try:
            if body.get("rollback"):
                old, new = await registry.rollback(pid, label)
                return JSONResponse({"id": pid, "label": label, "version": new, "previous": old})
            version = body.get("version")
            if isinstance(version, bool) or not isinstance(version, int):
                raise _bad("`version` must be an integer", "version")
            prev = await registry.set_label(pid, label, version)
        except PromptNotFound as exc:
            raise _not_found(str(exc), "version") from None
        except (PromptStoreError, ValueError) as exc:
            raise _bad(str(exc), "label") from None
        return JSONResponse({"id": pid, "label": label, "version": version, "previous": prev})

    return [
        Route("/admin/prompts", renders_errors(list_prompts), methods=["GET"]),
        Route("/admin/prompts", renders_errors(push_prompt), methods=["POST"]),
        Route("/admin/prompts/{prompt_id}", renders_errors(get_prompt), methods=["GET"]),
        Route("/admin/prompts/{prompt_id}/labels", renders_errors(move_label), methods=["POST"]),
    ]


async def routes(rt: Any) -> list[Route]:
    """Hook for the app's feature-route loader (stages are built before this runs)."""
    registry = getattr(getattr(rt, "services", None), "prompt_registry", None)
    if registry is None:
        stage = next((s for s in getattr(rt, "stages", []) if getattr(s, "name", None) == "prompts"), None)
        registry = getattr(stage, "registry", None)
    return admin_routes(registry) if registry is not None else []

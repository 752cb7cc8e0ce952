"""The prompt stage: turn a prompt reference into messages before routing.

A request names a prompt with a top-level ``prompt`` object (the OpenAI SDK's
``extra_body={"prompt": {...}}``)::

    {"id": "support-triage", "version": 3 | "label": "staging", "variables": {...}}

or its route pins one (``routes[].prompt: id | id@3 | id:production``); on a
pinned route the request may only pass ``variables`` (and the same ``id``).
Without version or label the ``production`` label is used, else the latest
version. The ``prompt`` key never reaches the upstream.

Merging: the rendered template messages come first, then the request's own
``messages`` in their order (so a system template leads, and the caller's turns
follow). Prompt ``parameters`` fill request params that are absent; the
caller's values win. The model hint is recorded, not enforced: routing follows
the request's ``model``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from gateway.errors import ErrorKind, GatewayError, invalid
from gateway.prompts.model import PromptFormatError, PromptRef, parse_ref
from gateway.prompts.registry import PromptNotFound, PromptRegistry
from gateway.prompts.render import arender_messages
from gateway.protocols import chat
from gateway.types import BaseStage, RequestContext

log = logging.getLogger("gatehouse.prompts")

HEADER = "x-gatehouse-prompt"
# route pins were parsed once at startup (a typo stops it); per request this is a cache hit
_parse_pin = functools.lru_cache(maxsize=256)(parse_ref)


class PromptStage(BaseStage):
    name = "prompts"

    def __init__(self, registry: PromptRegistry, route_pins: dict[str, PromptRef] | None = None) -> None:
        self.registry = registry
        self.route_pins = dict(route_pins or {})

    async def on_request(self, ctx: RequestContext) -> None:
        request = ctx.request
        if request is None:
            return  # /v1/completions' own `prompt` is the text to complete, not a managed prompt
        req, request.prompt = request.prompt, None  # the reference never reaches the upstream
        pin = self._pin(ctx)
        if req is None and pin is None:
            return
        ref, variables = self._reference(req, pin, ctx.model)
        try:
            version = await self.registry.resolve(ref)
        except PromptNotFound as exc:
            raise GatewayError(ErrorKind.NOT_FOUND, str(exc), param="prompt.id", code="prompt_not_found") from None
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise GatewayError(ErrorKind.UNAVAILABLE, f"prompt store unavailable: {exc}") from None
        except Exception as exc:  # redis.exceptions.* without importing redis here
            if type(exc).__module__.startswith("redis"):
                raise GatewayError(ErrorKind.UNAVAILABLE, f"prompt store unavailable: {exc}") from None
            raise
        rendered = await arender_messages(version, variables)
        request.messages[:0] = [chat.message_in(m) for m in rendered]  # templates are stored as Chat turns
        for k, v in version.parameters.items():
            if request.param(k) is None:
                request.set_param(k, v)
        ctx.response_headers[HEADER] = version.ref
        ctx.record.prompt_id = version.id
        ctx.record.prompt_version = str(version.version)
        # template inputs, for datasets built from traffic (dropped unless bodies are logged)
        ctx.record.extra["prompt_variables"] = variables
        if version.model:
            ctx.record.extra["prompt_model_hint"] = version.model
        ctx.state[self.name] = {"id": version.id, "version": version.version, "hash": version.content_hash}

    def _pin(self, ctx: RequestContext) -> PromptRef | None:
        """The prompt the request's route pins (``ctx.route``, resolved once after auth)."""
        if ctx.route is None:
            return self.route_pins.get(ctx.model)  # a stage driven without the app (tests, tools)
        text = ctx.route.settings.prompt
        return None if not text else _parse_pin(text)

    def _reference(self, req: Any, pin: PromptRef | None, model: str) -> tuple[PromptRef, dict[str, Any]]:
        if isinstance(req, str):  # shorthand: "prompt": "id@3" / "id:staging"
            req = {"id": req}
        if req is not None and not isinstance(req, dict):
            raise invalid("`prompt` must be an object {id, version | label, variables}", param="prompt")
        req = dict(req or {})
        unknown = sorted(set(req) - {"id", "version", "label", "variables"})
        if unknown:
            raise invalid(f"unknown `prompt` field(s) {', '.join(unknown)}; use id, version, label, variables", param=f"prompt.{unknown[0]}")
        variables = req.get("variables") or {}
        if not isinstance(variables, dict):
            raise invalid("`prompt.variables` must be an object", param="prompt.variables")
        if pin is not None:
            if req.get("id") not in (None, pin.id) or "version" in req or "label" in req:
                raise invalid(
                    f"model {model!r} pins prompt {pin}; a request may only pass `prompt.variables`", param="prompt"
                )
            return pin, variables
        pid = req.get("id")
        if not isinstance(pid, str) or not pid:
            raise invalid("`prompt.id` is required", param="prompt.id")
        if "version" in req and "label" in req:
            raise invalid("give `prompt.version` or `prompt.label`, not both", param="prompt.version")
        try:
            if "version" in req:
                v = req["version"]
                if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit():
                    raise invalid("`prompt.version` must be a positive integer", param="prompt.version")
                return parse_ref(f"{pid}@{int(v)}"), variables
            if "label" in req:
                if not isinstance(req["label"], str):
                    raise invalid("`prompt.label` must be a string", param="prompt.label")
                return parse_ref(f"{pid}:{req['label']}"), variables
            return parse_ref(pid), variables
        except PromptFormatError as exc:
            raise invalid(str(exc), param="prompt") from None

    async def aclose(self) -> None:
        await self.registry.aclose()

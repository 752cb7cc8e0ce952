"""Guard tiers ask their models through the gateway's own routes.

``RouteGuardTransport`` implements ``policies.guard.GuardTransport`` over the live
router, so a guard model gets the same retries, fallbacks, circuit breakers and
upstream keys as any routed model; the policy names only the route. The router is
looked up at call time: a config reload's new routes apply at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import GatewayError
from gateway.model import Reply
from gateway.protocols import chat
from gateway.routing import Attempt, Router
from policies.guard import GuardError


class RouteGuardTransport:
    def __init__(self, router: Callable[[], Router]) -> None:
        self._router = router

    async def _call(self, route_name: str, endpoint: Any, body: dict[str, Any]) -> dict[str, Any]:
        router = self._router()
        try:
            route = router.get(route_name)
            reply = await router.complete(route, endpoint, {"model": route_name, **body}, None, Attempt())
            if isinstance(reply, Reply):
                return chat.reply_out(reply, "text_completion" if endpoint == "completions" else "chat.completion")
            return reply
        except GatewayError as exc:
            raise GuardError(f"route `{route_name}`: {exc.message}") from None

    async def chat(self, route: str, messages: list[dict[str, Any]], *, max_tokens: int) -> str:
        reply = await self._call(route, "chat", {"messages": messages, "max_tokens": max_tokens, "temperature": 0})
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GuardError(f"route `{route}` returned no message content") from None
        if not isinstance(content, str):
            raise GuardError(f"route `{route}` returned no message content")
        return content

    async def completion(self, route: str, prompt: str, *, max_tokens: int) -> str:
        reply = await self._call(route, "completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        try:
            text = reply["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise GuardError(f"route `{route}` returned no completion text") from None
        if not isinstance(text, str):
            raise GuardError(f"route `{route}` returned no completion text")
        return text

    async def moderate(self, route: str, texts: list[str]) -> list[dict[str, Any]]:
        reply = await self._call(route, "moderations", {"input": texts})
        results = reply.get("results")
        if not isinstance(results, list):
            raise GuardError(f"route `{route}` returned no moderation results")
        return results


def missing_routes(wanted: set[str], routes: set[str]) -> list[str]:
    return sorted(wanted - routes)

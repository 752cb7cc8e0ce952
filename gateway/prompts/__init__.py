"""Managed prompts: immutable versions, movable labels, sandboxed rendering.

``build_stage(services)`` returns the prompt stage; the registry's store comes
from ``settings.prompts`` (SQLite file by default, or the shared Redis).
"""

from __future__ import annotations

from typing import Any

from gateway.prompts.model import (
    PromptFormatError,
    PromptRef,
    PromptSpec,
    PromptVersion,
    load_prompt_file,
    parse_ref,
    parse_spec,
)
from gateway.prompts.registry import PromptNotFound, PromptRegistry, registry_from_settings
from gateway.prompts.render import render_messages
from gateway.prompts.stage import HEADER, PromptStage
from gateway.types import Stage

__all__ = [
    "HEADER", "PromptFormatError", "PromptNotFound", "PromptRef", "PromptRegistry", "PromptSpec", "PromptStage",
    "PromptVersion", "build_stage", "load_prompt_file", "parse_ref", "parse_spec", "registry_from_settings",
    "render_messages",
]


async def build_stage(services: Any) -> Stage | None:
    """The prompt stage is always on: a request may name a prompt whenever it likes.

    Route pins (``routes[].prompt``) are parsed here so a typo fails at startup.
    The registry is also hung on ``services.prompt_registry`` when possible, for
    the admin API.
    """
    settings = services.settings
    pins: dict[str, PromptRef] = {}
    for route in settings.routes:
        if route.prompt:
            try:
                pins[route.name] = parse_ref(route.prompt)
            except PromptFormatError as exc:
                raise ValueError(f"routes[{route.name}].prompt: {exc}") from None
    registry = registry_from_settings(settings, getattr(services, "redis", None))
    try:
        services.prompt_registry = registry
    except (AttributeError, TypeError):  # frozen/slotted services: the app can use stage.registry
        pass
    return PromptStage(registry, pins)

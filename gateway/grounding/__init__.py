"""Grounding: retrieve passages from a FAISS index and have the model cite them.

``build_stage(services)`` loads every index in ``grounding.indexes`` (name ->
directory written by ``gatehouse index build``) into a hot-swapping holder,
checks each was built with the embedder in use, and returns the stage; None
when no index is configured.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.grounding.index import GroundingIndex, Hit, IndexHolder, read_manifest
from gateway.grounding.stage import HEADER, GroundingOptions, GroundingStage, parse_options
from gateway.types import Stage

__all__ = ["HEADER", "GroundingIndex", "GroundingOptions", "GroundingStage", "Hit", "IndexHolder", "build_stage", "read_manifest"]

log = logging.getLogger("gatehouse.grounding")


async def build_stage(services: Any, *, poll_seconds: float = 1.0) -> Stage | None:
    settings = services.settings
    routed = {r.name: r.grounding for r in settings.routes if r.grounding}
    if not settings.grounding.indexes:
        if routed:
            raise ValueError(f"route(s) {', '.join(sorted(routed))} turn grounding on but `grounding.indexes` is empty")
        return None
    embedder = services.embedder()  # grounding.embedder or the bundled MiniLM
    fingerprint = embedder.fingerprint
    holders: dict[str, IndexHolder] = {}
    for name, path in settings.grounding.indexes.items():
        holder = IndexHolder(settings.resolve_path(path), poll_seconds=poll_seconds, name=name)
        emb = holder.current.manifest["embedding"]
        if int(emb["dimension"]) != int(embedder.dimension) or emb["fingerprint"] != fingerprint:
            raise ValueError(
                f"grounding.indexes.{name}: built with {emb['model_id']} ({emb['fingerprint'][:12]}, dim {emb['dimension']}, "
                f"runtime {emb.get('runtime', 'torch')}) but the gateway embeds with {embedder.model_id} ({fingerprint[:12]}, "
                f"dim {embedder.dimension}, runtime {embedder.runtime}); rebuild the index "
                "(`gatehouse index build --runtime ...`) or set grounding.embedder / embedding.runtime to match"
            )
        holder.start()
        holders[name] = holder
    default = next(iter(holders)) if len(holders) == 1 else None
    options: dict[str, GroundingOptions] = {}
    for route, raw in routed.items():
        try:
            options[route] = parse_options(raw, default, None, f"routes[{route}].grounding")
        except Exception as exc:
            raise ValueError(getattr(exc, "message", str(exc))) from None
        if options[route].index not in holders:
            raise ValueError(f"routes[{route}].grounding.index {options[route].index!r} is not in grounding.indexes")
    log.info("grounding: %s", ", ".join(f"{n}={h.current!r}" for n, h in holders.items()))
    return GroundingStage(holders, embedder, options, services)

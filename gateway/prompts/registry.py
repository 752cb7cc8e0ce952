"""The prompt registry: push, resolve, label, roll back, diff, over any ``PromptStore``."""

from __future__ import annotations

import builtins
import difflib
from pathlib import Path
from typing import Any

import yaml

from gateway.prompts.model import LABEL_RE, PromptRef, PromptSpec, PromptVersion, parse_ref
from gateway.prompts.store import (
    PromptStore,
    PromptStoreError,
    PromptSummary,
    RedisPromptStore,
    SQLitePromptStore,
)

DEFAULT_LABEL = "production"


class PromptNotFound(LookupError):
    pass


class PromptRegistry:
    """Resolves references to immutable versions; versions are cached forever, labels never."""

    def __init__(self, store: PromptStore) -> None:
        self.store = store
        self._versions: dict[tuple[str, int], PromptVersion] = {}

    def __repr__(self) -> str:
        return f"PromptRegistry({self.store!r})"

    async def push(self, spec: PromptSpec) -> tuple[PromptVersion, bool]:
        pv, created = await self.store.push(spec)
        self._versions[(pv.id, pv.version)] = pv
        return pv, created

    async def get_version(self, prompt_id: str, version: int) -> PromptVersion:
        key = (prompt_id, version)
        pv = self._versions.get(key)
        if pv is None:
            pv = await self.store.get_version(prompt_id, version)
            if pv is None:
                raise PromptNotFound(f"prompt {prompt_id}@{version} does not exist")
            self._versions[key] = pv
        return pv

    async def resolve(self, ref: PromptRef | str, *, default_label: str = DEFAULT_LABEL) -> PromptVersion:
        """``id@3`` -> version 3; ``id:staging`` -> the label's version (read live);
        bare ``id`` -> the ``production`` label, or the latest version when it has none."""
        if isinstance(ref, str):
            ref = parse_ref(ref)
        if ref.version is not None:
            return await self.get_version(ref.id, ref.version)
        label = ref.label or default_label
        v = await self.store.get_label(ref.id, label)
        if v is None:
            if ref.label is not None:
                raise PromptNotFound(f"prompt {ref.id!r} has no label {label!r}")
            v = await self.store.latest(ref.id)
            if v is None:
                raise PromptNotFound(f"prompt {ref.id!r} does not exist")
        return await self.get_version(ref.id, v)

    async def list(self) -> builtins.list[PromptSummary]:
        return await self.store.list_prompts()

    async def versions(self, prompt_id: str) -> builtins.list[PromptVersion]:
        return await self.store.versions(prompt_id)

    async def labels(self, prompt_id: str) -> dict[str, int]:
        return await self.store.labels(prompt_id)

    async def set_label(self, prompt_id: str, label: str, version: int) -> int | None:
        if not LABEL_RE.match(label):
            raise ValueError(f"bad label {label!r}: use letters, digits, _ and -, starting with a letter")
        try:
            return await self.store.set_label(prompt_id, label, version)
        except PromptStoreError as exc:
            raise PromptNotFound(str(exc)) from None

    async def rollback(self, prompt_id: str, label: str) -> tuple[int, int]:
        return await self.store.rollback(prompt_id, label)

    async def diff(self, prompt_id: str, v1: int, v2: int) -> str:
        a, b = await self.get_version(prompt_id, v1), await self.get_version(prompt_id, v2)
        return "".join(
            difflib.unified_diff(
                _diffable(a).splitlines(keepends=True),
                _diffable(b).splitlines(keepends=True),
                fromfile=a.ref,
                tofile=b.ref,
            )
        )

    async def aclose(self) -> None:
        await self.store.aclose()


def _diffable(pv: PromptVersion) -> str:
    d: dict[str, Any] = pv.to_dict()
    for k in ("version", "created_at", "content_hash"):
        d.pop(k)
    return yaml.safe_dump(d, sort_keys=True, allow_unicode=True, width=100)


def registry_from_settings(settings: Any, redis: Any = None) -> PromptRegistry:
    """Build the configured store: SQLite at ``prompts.sqlite_path`` or the shared Redis."""
    ps = settings.prompts
    if ps.store == "redis":
        if redis is None:
            raise ValueError("prompts.store is `redis` but no Redis client is configured (set redis.url)")
        return PromptRegistry(RedisPromptStore(redis, settings.redis.key_prefix))
    return PromptRegistry(SQLitePromptStore(settings.resolve_path(ps.sqlite_path)))


def default_sqlite_registry(path: str | Path = ".gatehouse/prompts.db") -> PromptRegistry:
    return PromptRegistry(SQLitePromptStore(path))

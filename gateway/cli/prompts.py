"""gatehouse prompts: manage prompt versions and labels.

    gatehouse prompts push FILE                  store a new version (unchanged content: no new version)
    gatehouse prompts list
    gatehouse prompts show ID[@VERSION|:LABEL]
    gatehouse prompts diff ID V1 V2
    gatehouse prompts label ID VERSION LABEL     e.g. label support-triage 3 production
    gatehouse prompts rollback ID LABEL          move LABEL back to the version it pointed to before

``--config FILE`` picks the store from a gateway config (``prompts.store``);
without it the SQLite file ``.gatehouse/prompts.db`` is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.prompts.model import PromptFormatError, load_prompt_file, parse_ref
from gateway.prompts.registry import (
    PromptNotFound,
    PromptRegistry,
    default_sqlite_registry,
    registry_from_settings,
)
from gateway.prompts.store import PromptStoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse prompts", description="Manage prompt versions and labels.")
    p.add_argument("--config", help="gateway config file (store from its `prompts` section)")
    p.add_argument("--db", default=".gatehouse/prompts.db", help="SQLite file when no --config (default: %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("push", help="push a prompt file (YAML) as a new version")
    s.add_argument("file")
    s.add_argument("--label", help="also point this label at the pushed version")
    sub.add_parser("list", help="list prompts with their latest version and labels")
    s = sub.add_parser("show", help="show a version: ID, ID@VERSION or ID:LABEL")
    s.add_argument("ref")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("diff", help="unified diff between two versions")
    s.add_argument("id")
    s.add_argument("v1", type=int)
    s.add_argument("v2", type=int)
    s = sub.add_parser("label", help="point LABEL at VERSION")
    s.add_argument("id")
    s.add_argument("version", type=int)
    s.add_argument("label")
    s = sub.add_parser("rollback", help="move LABEL back to its previous version")
    s.add_argument("id")
    s.add_argument("label")
    return p


async def _with_registry(args: argparse.Namespace, fn: Callable[[PromptRegistry], Awaitable[int]]) -> int:
    redis = None
    if args.config:
        from gateway.config import load_settings

        settings = load_settings(args.config)
        if settings.prompts.store == "redis":
            if not settings.redis.url:
                print(f"error: {args.config}: prompts.store is redis but redis.url is not set", file=sys.stderr)
                return 2
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis.url)
        registry = registry_from_settings(settings, redis)
    else:
        registry = default_sqlite_registry(args.db)
    try:
        return await fn(registry)
    finally:
        await registry.aclose()
        if redis is not None:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    async def run(reg: PromptRegistry) -> int:
        if args.cmd == "push":
            pv, created = await reg.push(load_prompt_file(args.file))
            print(f"{'pushed' if created else 'unchanged'} {pv.ref} ({pv.content_hash[:12]})")
            if args.label:
                await reg.set_label(pv.id, args.label, pv.version)
                print(f"{pv.id}:{args.label} -> {pv.version}")
            return 0
        if args.cmd == "list":
            items = await reg.list()
            if not items:
                print("no prompts")
            for s in items:
                labels = ", ".join(f"{k}={v}" for k, v in s.labels.items()) or "-"
                print(f"{s.id}\tlatest={s.latest}\t{labels}")
            return 0
        if args.cmd == "show":
            pv = await reg.resolve(parse_ref(args.ref))
            if args.json:
                print(json.dumps(pv.to_dict(), indent=2, ensure_ascii=False))
                return 0
            _print_version(pv, await reg.labels(pv.id))
            return 0
        if args.cmd == "diff":
            out = await reg.diff(args.id, args.v1, args.v2)
            print(out or f"{args.id}@{args.v1} and @{args.v2} are identical")
            return 0
        if args.cmd == "label":
            prev = await reg.set_label(args.id, args.label, args.version)
            print(f"{args.id}:{args.label} -> {args.version}" + (f" (was {prev})" if prev else ""))
            return 0
        if args.cmd == "rollback":
            old, new = await reg.rollback(args.id, args.label)
            print(f"{args.id}:{args.label} -> {new} (was {old})")
            return 0
        raise AssertionError(args.cmd)

    try:
        return asyncio.run(_with_registry(args, run))
    except (PromptFormatError, PromptNotFound, PromptStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from gateway.config import ConfigError

        if isinstance(exc, ConfigError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def _print_version(pv: Any, labels: dict[str, int]) -> None:
    here = [k for k, v in labels.items() if v == pv.version]
    print(f"{pv.ref}  hash={pv.content_hash[:12]}  labels={','.join(here) or '-'}")
    print(f"author: {pv.author or '-'}   model hint: {pv.model or '-'}   note: {pv.note or '-'}")
    if pv.variables:
        print("variables: " + ", ".join(v.name + ("" if v.required else f"={v.default!r}") for v in pv.variables))
    if pv.parameters:
        print("parameters: " + json.dumps(pv.parameters))
    for m in pv.messages:
        print(f"--- {m.role}\n{m.template}")


if __name__ == "__main__":
    raise SystemExit(main())

"""``gatehouse keys``: create, list and revoke API keys in the configured store;
``gatehouse keys budget set|clear|show`` manages spend budgets (``gateway.budgets``).

The store is the one ``auth.store`` in ``--config`` (or ``$GATEHOUSE_CONFIG``)
selects: ``redis`` (``redis.url``) or ``sqlite`` (``auth.sqlite_path``).
``create`` prints the plaintext key once; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.config import ConfigError, load_settings
from gateway.errors import GatewayError
from gateway.keys import KeyStore, build_key_store
from gateway.ratelimit import LIMIT_NAMES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse keys", description="Manage gateway API keys.")
    p.add_argument("--config", default=os.environ.get("GATEHOUSE_CONFIG"), help="config file (default $GATEHOUSE_CONFIG)")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("create", help="create a key and print it once")
    c.add_argument("--tenant", required=True)
    c.add_argument("--models", default="*", help="comma-separated public model names (default: all)")
    c.add_argument("--policy", default=None)
    c.add_argument("--scope", action="append", default=[], help="repeatable")
    c.add_argument("--id", dest="key_id", default=None, help="key id (default: generated)")
    for name in LIMIT_NAMES:
        flag = name.replace("_", "-")
        c.add_argument(f"--{flag}", type=int, default=None, help=f"per-key limit override: {flag}")
    c.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="list keys (never the secrets)")
    ls.add_argument("--tenant", default=None)
    ls.add_argument("--json", action="store_true")

    r = sub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")

    b = sub.add_parser("budget", help="set, clear and show spend budgets (per key or tenant) and their spend")
    bsub = b.add_subparsers(dest="budget_cmd", required=True)
    for name, helptext in (("set", "set a day or month spend limit"), ("clear", "remove a limit"), ("show", "limits and spend")):
        bp = bsub.add_parser(name, help=helptext)
        who = bp.add_mutually_exclusive_group(required=name != "show")
        who.add_argument("--key", dest="budget_key", default=None, help="key id")
        who.add_argument("--tenant", dest="budget_tenant", default=None, help="tenant name")
        if name != "show":
            bp.add_argument("--period", choices=("day", "month"), required=True)
            bp.add_argument("--model", default=None, help="limit spend on this public model only")
        if name == "set":
            bp.add_argument("--amount", type=float, required=True, help="in the price tables' currency")
        bp.add_argument("--json", action="store_true")
    return p


async def _budget(args: argparse.Namespace, settings: Any, redis: Any) -> int:
    from gateway.budgets import build_budgets
    from gateway.cost import Meter
    from gateway.metrics import Metrics

    out = sys.stdout
    metrics = Metrics()
    budgets = build_budgets(settings, redis, Meter(settings, metrics), metrics)
    store = budgets.store
    scope, owner = ("key", args.budget_key) if args.budget_key else ("tenant", args.budget_tenant)
    if args.budget_cmd in ("set", "clear"):
        amount = args.amount if args.budget_cmd == "set" else None
        await store.set(scope, owner, args.period, amount, args.model)
    limits = await store.all()
    if owner is not None:
        limits = [lim for lim in limits if (lim.scope, lim.owner) == (scope, owner)]
    spent = await budgets.spend(limits)
    rows = [{**lim.public(), "spent": s, "currency": budgets.meter.currency} for lim, s in zip(limits, spent, strict=True)]
    if args.json:
        out.write(orjson.dumps(rows).decode() + "\n")
        return 0
    out.write(f"{'SCOPE':<7} {'ID':<18} {'PERIOD':<6} {'MODEL':<14} {'SPENT':>12} {'LIMIT':>12} {'USED':>6} SOURCE\n")
    for r in rows:
        used = r["spent"] / r["amount"] if r["amount"] else 0.0
        out.write(f"{r['scope']:<7} {r['id']:<18} {r['period']:<6} {r['model'] or '*':<14} {r['spent']:>12.6g} "
                  f"{r['amount']:>12g} {used:>6.0%} {r['source']}\n")
    return 0


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    out = sys.stdout
    if args.cmd == "create":
        limits = {
            k: v
            for k in LIMIT_NAMES
            if (v := getattr(args, k)) is not None
        }
        models = [m.strip() for m in args.models.split(",") if m.strip()] or ["*"]
        nk = await store.create(args.tenant, models, args.policy, args.scope, limits, args.key_id)
        if args.json:
            out.write(orjson.dumps({**nk.record.public(), "key": nk.key}).decode() + "\n")
        else:
            out.write(f"key_id: {nk.key_id}\ntenant: {nk.record.tenant}\nkey:    {nk.key}\n")
            out.write("(store the key now: it is not shown again)\n")
        return 0
    if args.cmd == "list":
        recs = await store.list(args.tenant)
        if args.json:
            out.write(orjson.dumps([r.public() for r in recs]).decode() + "\n")
            return 0
        out.write(f"{'KEY_ID':<18} {'TENANT':<16} {'SOURCE':<8} {'STATUS':<8} {'PREFIX':<12} MODELS / LIMITS\n")
        for r in recs:
            status = "revoked" if r.revoked_at else "active"
            lim = " ".join(f"{k}={v}" for k, v in r.limits.items())
            out.write(f"{r.key_id:<18} {r.tenant:<16} {r.source:<8} {status:<8} {r.display:<12} {','.join(r.models)} {lim}\n")
        return 0
    if not await store.revoke(args.key_id):
        sys.stderr.write(f"gatehouse keys: no key {args.key_id!r}\n")
        return 1
    out.write(f"revoked {args.key_id}\n")
    return 0


async def _main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    redis: Any = None
    if args.cmd == "budget":
        if settings.redis.url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis.url, socket_timeout=5)
        try:
            return await _budget(args, settings, redis)
        finally:
            if redis is not None:
                await redis.aclose()
    if settings.auth.store == "redis":
        if not settings.redis.url:
            raise ConfigError(args.config, ["auth.store is `redis` but redis.url is not set"])
        import redis.asyncio as aioredis

        redis = aioredis.from_url(settings.redis.url, socket_timeout=5)
    try:
        store = build_key_store(settings, redis)
        try:
            return await _run(args, store)
        finally:
            await store.aclose()
    finally:
        if redis is not None:
            await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        sys.stderr.write("gatehouse keys: give --config FILE (or set GATEHOUSE_CONFIG)\n")
        return 2
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        sys.stderr.write(f"gatehouse keys: {exc}\n")
        return 2
    except GatewayError as exc:
        sys.stderr.write(f"gatehouse keys: {exc.message}\n")
        return 1
    except ValueError as exc:
        sys.stderr.write(f"gatehouse keys: {exc}\n")
        return 2
    except (OSError, RedisError) as exc:  # e.g. Redis refused the connection
        sys.stderr.write(f"gatehouse keys: store unreachable: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

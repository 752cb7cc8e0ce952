"""``gatehouse console``: console users (sign-in for the web console at ``/console``).

Users live beside the API keys, in the store ``auth.store`` selects: ``sqlite``
(``auth.sqlite_path``) or ``redis``. With ``auth.store: config``, put users in the
config file's ``console.users`` with a hash from ``hash-password``. The password is
read from ``--password-stdin`` or asked for (never taken as an argument, so it stays
out of shell history); only its scrypt hash is stored.

    gatehouse console add-user alice --role editor --config gatehouse.yaml
    gatehouse console add-user bob --role viewer --tenant acme --config gatehouse.yaml
    gatehouse console list-users --config gatehouse.yaml
    gatehouse console remove-user bob --config gatehouse.yaml
    gatehouse console hash-password            # for console.users in a config file
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from gateway.config import ConfigError, Settings, load_settings
from gateway.console.store import hash_password
from gateway.console.users import UserStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse console", description="Manage web console users.")
    p.add_argument("--config", default=os.environ.get("GATEHOUSE_CONFIG"), help="config file (default $GATEHOUSE_CONFIG)")
    sub = p.add_subparsers(dest="cmd", required=True)
    # --config is also accepted after the sub-command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a = sub.add_parser("add-user", help="create a user or reset its password and role", parents=[common])
    a.add_argument("name")
    a.add_argument("--role", choices=("viewer", "editor"), required=True)
    a.add_argument("--tenant", default=None, help="the user sees only this tenant's traffic")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sub.add_parser("list-users", help="list users (never their hashes)", parents=[common])
    r = sub.add_parser("remove-user", help="delete a user", parents=[common])
    r.add_argument("name")
    h = sub.add_parser("hash-password", help="print an scrypt hash for console.users in a config file")
    h.add_argument("--password-stdin", action="store_true")
    return p


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return first


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "hash-password":
            print(hash_password(_password(args.password_stdin)))
            return 0
        if not args.config:
            print("gatehouse console: give --config (or set GATEHOUSE_CONFIG)", file=sys.stderr)
            return 2
        settings = load_settings(args.config)
        return asyncio.run(_run(args, settings))
    except ConfigError as exc:
        print(f"gatehouse console: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gatehouse console: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    redis = None
    if settings.redis.url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(settings.redis.url)
    store = UserStore(settings, redis)
    try:
        if args.cmd == "add-user":
            user = await store.put(args.name, args.role, _password(args.password_stdin), args.tenant)
            print(f"console user {user.name}: role {user.role}" + (f", tenant {user.tenant}" if user.tenant else ""))
        elif args.cmd == "list-users":
            for u in await store.list():
                print(f"{u.name}\t{u.role}\t{u.tenant or '*'}\t{u.source}")
        elif args.cmd == "remove-user":
            if not await store.remove(args.name):
                print(f"gatehouse console: no managed user {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed {args.name}")
    finally:
        store.close()
        if redis is not None:
            await redis.aclose()
    return 0

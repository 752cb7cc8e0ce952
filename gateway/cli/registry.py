"""`gatehouse registry`: list, inspect and link artifacts; deploy and promote models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gateway.cli import HelpFormatter
from tuning.registry import KINDS, Registry, RegistryError


def add_registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", metavar="DIR", help="registry directory (default: registry.path of --config, else .gatehouse/registry)")


def open_registry(args: argparse.Namespace) -> Registry:
    """The registry named by --registry, else by the gateway config (--config / $GATEHOUSE_CONFIG)."""
    if getattr(args, "registry", None):
        return Registry(args.registry)
    cfg = getattr(args, "gateway_config", None) or os.environ.get("GATEHOUSE_CONFIG")
    if cfg:
        from gateway.config import load_settings

        return Registry.from_settings(load_settings(cfg))
    return Registry(Path(".gatehouse/registry"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse registry", description=__doc__, formatter_class=HelpFormatter)
    add_registry_args(parser)
    parser.add_argument("--gateway-config", metavar="FILE", help="gateway config whose registry.path to use")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("list", help="list artifacts", formatter_class=HelpFormatter)
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="one artifact as JSON", formatter_class=HelpFormatter)
    p.add_argument("id")

    p = sub.add_parser("lineage", help="ancestors and descendants as an indented tree", formatter_class=HelpFormatter)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("register", help="register a file or directory", formatter_class=HelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("path")
    p.add_argument("--name")
    p.add_argument("--parent", action="extend", nargs="+", default=[], metavar="ID", help="parent artifact id(s)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--move", action="store_true", help="move instead of copy")

    for name, helptext in (("deploy", "add a model as a canary target of a route"), ("promote", "move traffic to a canary that won AutoSxS")):
        p = sub.add_parser(name, help=helptext, formatter_class=HelpFormatter)
        p.add_argument("model_id")
        p.add_argument("--route", required=True)
        p.add_argument("--weight", type=float, default=5.0 if name == "deploy" else 50.0, help="percent of the route's traffic (default: %(default)s)")
        p.add_argument("--config", required=True, metavar="FILE", help="gateway config YAML to rewrite")
        p.add_argument("--admin-url", default=os.environ.get("GATEHOUSE_ADMIN_URL"),
                       help="gateway base URL: POST /admin/reload, then read the live weights back from GET /admin/routes "
                            "(default: $GATEHOUSE_ADMIN_URL)")
        p.add_argument("--admin-key", help="admin key (default: $GATEHOUSE_ADMIN_KEY)")
        if name == "promote":
            p.add_argument("--no-verify", action="store_true", help="only rewrite the file; do not check the live weights")
            p.add_argument("--report", metavar="JSON", help="AutoSxS report of canary vs current")
            p.add_argument("--side", choices=("A", "B"), default="A", help="which answer the canary gave in the AutoSxS run")
            p.add_argument("--force", action="store_true", help="promote without a winning report")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        reg = open_registry(args)
    except Exception as exc:  # config errors, unreadable dirs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, reg)
    except (RegistryError, OSError, ValueError) as exc:  # one line, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        reg.close()


def _run(args: argparse.Namespace, reg: Registry) -> int:
    from gateway.config import check_raw_config
    from tuning.deploy import DeployError, deploy, promote

    if args.cmd == "list":
        arts = reg.list(args.kind)
        if args.json:
            print(json.dumps([a.to_dict() for a in arts], indent=2))
        else:
            for a in arts:
                print(f"{a.id}\t{len(a.parents)} parent(s)\t{a.path or '-'}")
        return 0
    if args.cmd == "show":
        print(json.dumps(reg.resolve(args.id).to_dict(), indent=2))
        return 0
    if args.cmd == "lineage":
        lin = reg.lineage(args.id)
        print(json.dumps(lin.to_dict(), indent=2) if args.json else lin.render())
        return 0
    if args.cmd == "register":
        meta = {}
        for kv in args.meta:
            k, _, v = kv.partition("=")
            meta[k] = v
        parents = [reg.resolve(p).id for p in args.parent]
        art = reg.register(args.kind, args.path, name=args.name, metadata=meta, parents=parents, move=args.move)
        print(art.id)
        return 0
    args.admin_key = args.admin_key or os.environ.get("GATEHOUSE_ADMIN_KEY")
    try:
        if args.cmd == "deploy":
            res = deploy(args.model_id, args.route, args.weight, args.config, registry=reg, check_config=check_raw_config, admin_url=args.admin_url, admin_key=args.admin_key)
        else:
            res = promote(
                args.model_id, args.route, args.weight, args.config, registry=reg, check_config=check_raw_config, report_path=args.report,
                side=args.side, force=args.force, admin_url=args.admin_url, admin_key=args.admin_key, verify=not args.no_verify,
            )
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.cmd}: route {res.route} target {res.target_name} ({res.variant}) weight {res.weight}%")
    print("weights written: " + ", ".join(f"{k}={v:g}" for k, v in res.weights.items()))
    if res.live is not None:
        print(f"live weights verified at {args.admin_url}: " + ", ".join(f"{k}={v:g}" for k, v in res.live.items()))
    else:
        print("not verified (no --admin-url): the gateway picks the file up within ~1 s (file watch) or on SIGHUP")
    print(f"recorded {res.deployment_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""``gatehouse config check FILE``: parse strictly and report every problem with its path."""

from __future__ import annotations

import argparse
import sys

from gateway.config import ConfigError, load_settings


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gatehouse config")
    sub = ap.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="validate a config file")
    chk.add_argument("file")
    args = ap.parse_args(argv)
    try:
        s = load_settings(args.file)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    targets = sum(len(r.targets) + len(r.fallbacks) for r in s.routes)
    print(f"{args.file}: OK ({len(s.routes)} routes, {targets} targets, log sink {s.traffic_log.sink})")
    return 0

"""``gatehouse`` command: dispatches ``gatehouse GROUP ...`` to ``gateway.cli.GROUP.main(argv)``."""

from __future__ import annotations

import importlib
import os
import sys

# spinning OpenMP workers (torch, faiss) collapse throughput on small shared CPU boxes
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

GROUPS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.cli.serve", "run the gateway"),
    "config": ("gateway.cli.configcmd", "check a config file"),
    "logs": ("gateway.cli.logs", "read the traffic log (JSONL or Redis stream)"),
    "policy": ("gateway.cli.policy", "check, explain and dry-run policy documents"),
    "recitation": ("gateway.cli.recitation", "build and query recitation indexes"),
    "prompts": ("gateway.cli.prompts", "manage prompt versions and labels"),
    "index": ("gateway.cli.index", "build and query grounding indexes"),
    "eval": ("gateway.cli.eval", "evaluation jobs: run, metrics, sxs, bias, monitor"),
    "registry": ("gateway.cli.registry", "artifact registry, lineage, canary deploys"),
    "tune": ("gateway.cli.tune", "datasets and tuning jobs"),
    "feedback": ("gateway.cli.feedback", "send feedback on a logged request"),
    "console": ("gateway.cli.console", "web console users (sign-in for /console)"),
    "keys": ("gateway.cli.keys", "create, list and revoke API keys"),
}


def usage() -> str:
    lines = ["usage: gatehouse COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {doc}" for name, (_, doc) in GROUPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    group, rest = args[0], args[1:]
    if group not in GROUPS:
        print(f"gatehouse: unknown command {group!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = GROUPS[group][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"gatehouse: `{group}` is not available in this build", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

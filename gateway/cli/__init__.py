"""``gatehouse`` command: dispatches ``gatehouse GROUP ...`` to ``gateway.cli.GROUP.main(argv)``."""

from __future__ import annotations

import argparse
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


def _no_default(action: argparse.Action) -> bool:
    return action.default is None or action.default is False or action.default is argparse.SUPPRESS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the module docstring's layout and shows every option's default
    (unless the help text already says it, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or _no_default(action) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and not _no_default(action):
            action.help = "(default: %(default)s)"  # argparse skips options without help text
        super().add_argument(action)


ENV_VARS = """environment:
  GATEHOUSE_CONFIG      gateway config file (serve, registry)
  GATEHOUSE_URL         gateway base URL for `feedback add`
  GATEHOUSE_BASE_URL    OpenAI base URL (…/v1) for `eval run|sxs|bias --model`
  GATEHOUSE_API_KEY     API key for those (then OPENAI_API_KEY)
  GATEHOUSE_ADMIN_URL   gateway base URL for `registry deploy|promote` reload + verify
  GATEHOUSE_ADMIN_KEY   admin key (/admin/*)
  GATEHOUSE_DATA_DIR    public data directory for training/quality scripts (--data)
  GATEHOUSE_NO_PROGRESS set to hide progress bars
  GATEHOUSE_DEBUG       set to show tracebacks of unexpected CLI errors"""


def usage() -> str:
    lines = ["usage: gatehouse COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {doc}" for name, (_, doc) in GROUPS.items()]
    return "\n".join(lines) + "\n\n" + ENV_VARS


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

"""``gatehouse policy``: check, explain and dry-run policy documents.

    gatehouse policy check policies/                     # every problem, file:line:col
    gatehouse policy explain --tenant acme --model chat policies/
    gatehouse policy dry-run policies/demo.yaml --text "..." --tenant acme --model chat
    gatehouse policy schema [--write policies/schema.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from policies.engine import Engine
from policies.loader import PolicyLoadError
from policies.policy_set import PolicySet, Rule


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatehouse policy", description="Check, explain and dry-run policy documents.")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser(
        "check",
        help="validate policy files; every error with file:line:column, and every threshold no configured scorer produces",
    )
    c.add_argument("files", nargs="+", help="policy files or directories")
    c.add_argument(
        "--config", type=Path, default=None,
        help="gateway config whose safety scorer the thresholds are checked against (default: the default scorer)",
    )

    e = sub.add_parser("explain", help="print the rules that apply to a tenant, model and key")
    e.add_argument("--tenant", required=True)
    e.add_argument("--model", required=True, help="public model (route) name")
    e.add_argument("--key", default=None, help="API key id (default: rules for any key only)")
    e.add_argument("--policy", default=None, help="only this policy document (as a key's `policy:` would)")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("files", nargs="+")

    d = sub.add_parser("dry-run", help="evaluate a text against the policies without a gateway")
    d.add_argument("files", nargs="+")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--text")
    src.add_argument("--text-file", type=Path)
    d.add_argument("--direction", choices=("input", "output"), default="input")
    d.add_argument(
        "--role", default=None,
        help="where the text sits (input: user, system, developer, assistant, tool, grounding; output: assistant, "
        "tool_call); only rules scoped to it apply (default: user on input, assistant on output)",
    )
    d.add_argument("--tenant", required=True)
    d.add_argument("--model", required=True)
    d.add_argument("--key", default=None)
    d.add_argument("--policy", default=None)
    d.add_argument(
        "--config", type=Path, default=None,
        help="gateway config whose safety scorer and recitation index to load (default: none; those checks then follow on_error)",
    )
    d.add_argument("--json", action="store_true")

    s = sub.add_parser("schema", help="print the JSON schema of a policy document")
    s.add_argument("--write", type=Path, default=None, help="write it to this file instead (e.g. policies/schema.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "schema":
        from policies.schema import regenerate, schema_text

        if args.write:
            print(f"wrote {regenerate(args.write)}")
        else:
            sys.stdout.write(schema_text())
        return 0
    try:
        policies = PolicySet.load(args.files)
    except PolicyLoadError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    if args.cmd == "check":
        problems = _coverage(policies, args.config)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"ok: {len(policies.documents)} policies, {len(policies.rules)} rules, version {policies.version}")
        return 0
    if args.cmd == "explain":
        return _explain(policies, args)
    return asyncio.run(_dry_run(policies, args))


def _coverage(policies: PolicySet, config: Path | None) -> list[Any]:
    from policies.coverage import uncovered

    if not policies.needs("safety") and not policies.guard_routes():
        return []
    from gateway.config import Settings, load_settings

    settings = load_settings(config) if config else Settings()
    local = _local_categories(settings) if policies.needs("safety") else None
    return uncovered(policies, local)


def _local_categories(settings: Any) -> tuple[str, frozenset[str]] | None:
    """The configured scorer's name and categories; the shipped head's without loading MiniLM."""
    backend = settings.safety.backend
    if backend == "none":
        return None
    if backend == "minilm-head":
        from evaluators.safety.head import Head, sha256_file
        from evaluators.safety.minilm_head import DEFAULT_HEAD

        path = settings.resolve_path(settings.safety.head) if settings.safety.head else DEFAULT_HEAD
        return f"minilm-head@{sha256_file(path)[:12]}", frozenset(Head.load(path).labels)
    from evaluators.safety import load_scorer

    scorer = load_scorer(settings.safety, settings.base_dir)
    if scorer is None:
        return None
    return str(scorer.name), frozenset(scorer.categories)


def _explain(policies: PolicySet, args: argparse.Namespace) -> int:
    if args.policy and not policies.has_policy(args.policy):
        print(f"no policy document with id {args.policy!r}", file=sys.stderr)
        return 1
    effective = policies.explain(args.tenant, args.model, args.key, policy=args.policy)
    if args.json:
        out = {"version": policies.version, **{d: [r.summary() for r in rules] for d, rules in effective.items()}}
        print(json.dumps(out, indent=2))
        return 0
    print(f"policy version {policies.version}")
    print(f"tenant={args.tenant} model={args.model} key={args.key or '(any)'}")
    for direction, rules in effective.items():
        print(f"\n{direction}: {len(rules)} rule(s)")
        for r in rules:
            print(_describe(r))
    return 0


def _describe(r: Rule) -> str:
    lines = [f"  - {r.id}  [{r.policy}@{r.policy_version}]  {r.source}"]
    if r.description:
        lines.append(f"      {r.description}")
    roles = "; ".join(f"{d}: {', '.join(r.roles_for(d))}" for d in ("input", "output") if r.direction in (d, "both"))
    lines.append(f"      roles: {roles}")
    for c in r.checks:
        spec = c.spec.model_dump(exclude={"type", "action", "timeout_ms", "on_error"}, exclude_defaults=True)
        params = ", ".join(f"{k}={v}" for k, v in spec.items())
        lines.append(
            f"      {c.type}({params}) -> {c.action}  timeout={c.spec.timeout_ms:g}ms on_error={c.on_error}"
        )
    if r.direction in ("output", "both"):
        lines.append(f"      stream: holdback {r.stream.holdback_chars} chars, context {r.stream.context_chars} chars")
    return "\n".join(lines)


async def _dry_run(policies: PolicySet, args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else args.text_file.read_text(encoding="utf-8")
    logging.getLogger("gatehouse.policies").setLevel(logging.ERROR)  # failed checks show up as verdicts
    safety, recitation = _load_models(args.config, policies) if args.config else (None, None)
    engine = Engine(policies, safety=safety, recitation=recitation)
    role = args.role or ("user" if args.direction == "input" else "assistant")
    rules = [
        r for r in policies.resolve(args.tenant, args.key, args.model, args.direction, policy=args.policy)
        if r.covers(args.direction, role)
    ]
    outcome = await engine.evaluate_rules(rules, args.direction, text)
    for model in (safety, recitation):
        if model is not None and hasattr(model, "aclose"):
            await model.aclose()
    if args.json:
        out: dict[str, Any] = {
            "version": policies.version,
            "action": outcome.action,
            "rules": [r.id for r in rules],
            "verdicts": [_verdict_dict(v) for v in outcome.verdicts],
        }
        if outcome.action == "redact":
            out["redacted_text"] = outcome.text
        print(json.dumps(out, indent=2))
        return 0
    print(f"policy version {policies.version}; {len(rules)} {args.direction} rule(s) apply to role {role}")
    for v in outcome.verdicts:
        detail = f"  {json.dumps(v.detail)}" if v.detail else ""
        print(f"  {v.rule:<24} {v.check:<10} {v.category:<16} score={v.score:<6g} -> {v.action}{detail}")
    enforced = outcome.action
    if outcome.blocked_by is not None:
        enforced += f" (rule {outcome.blocked_by.rule}, {outcome.blocked_by.category})"
    print(f"enforced: {enforced}")
    if outcome.action == "redact":
        print(f"redacted text: {outcome.text}")
    return 0


def _verdict_dict(v: Any) -> dict[str, Any]:
    return {
        "rule": v.rule, "check": v.check, "category": v.category, "score": v.score,
        "action": v.action, "latency_ms": round(v.latency_ms, 3), "detail": v.detail,
    }


def _load_models(config: Path, policies: PolicySet) -> tuple[Any, Any]:
    from gateway.config import load_settings

    settings = load_settings(config)
    safety = recitation = None
    if policies.needs("safety") and settings.safety.backend != "none":
        from evaluators.safety import load_scorer

        safety = load_scorer(settings.safety, settings.base_dir)
    if policies.needs("recitation") and settings.recitation.index:
        from evaluators.recitation import RecitationIndex

        recitation = RecitationIndex.load(settings.resolve_path(settings.recitation.index))
    return safety, recitation


if __name__ == "__main__":
    sys.exit(main())

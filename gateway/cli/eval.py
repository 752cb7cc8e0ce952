"""`gatehouse eval`: evaluation jobs — run, metrics, sxs, bias, export, monitor.

    gatehouse eval run --dataset qa.jsonl --model gpt-small --out runs/small.jsonl
    gatehouse eval metrics --dataset qa.jsonl --results runs/small.jsonl --report-dir reports/
    gatehouse eval sxs --dataset qa.jsonl --a runs/small.jsonl --b runs/large.jsonl --judge-model judge
    gatehouse eval bias --data DIR           # default safety scorer on the identity templates
    gatehouse eval export --traffic logs/traffic.jsonl --model m --out ds.jsonl
    gatehouse eval monitor --redis-url redis://127.0.0.1:6379/0 --stream gatehouse:traffic --port 9464

Gateway access: --base-url (default $GATEHOUSE_BASE_URL or http://127.0.0.1:8080/v1)
and --api-key (default $GATEHOUSE_API_KEY, then $OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.cli import HelpFormatter

# inside the data directory (--data DIR or $GATEHOUSE_DATA_DIR; see the README's data table)
TEMPLATES_FILE = Path("conversationai_bias_eval") / "en_sentence_templates_with_identity.csv"
HATECHECK_FILE = Path("hatecheck") / "test_suite_cases.csv"


def _command(argv: Sequence[str]) -> str:
    return "gatehouse eval " + " ".join(shlex.quote(a) for a in argv if a)


def _redact(argv: Sequence[str]) -> list[str]:
    out, hide = [], False
    for a in argv:
        if a.startswith("--api-key="):
            a = "--api-key=REDACTED"
        out.append("REDACTED" if hide else a)
        hide = a == "--api-key"
    return out


def add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default=os.environ.get("GATEHOUSE_BASE_URL", "http://127.0.0.1:8080/v1"),
                   help="gateway OpenAI base URL, …/v1 ($GATEHOUSE_BASE_URL, else http://127.0.0.1:8080/v1)")
    p.add_argument("--api-key", help="gateway API key (default: $GATEHOUSE_API_KEY, then $OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--max-retries", type=int, default=3, help="client retries for 429/5xx/timeouts")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse eval", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run a dataset through the gateway (resumable)", formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="results JSONL (appended; rerun to resume)")
    p.add_argument("--prompt", dest="prompt_id", help="gateway prompt id to render (extra_body prompt)")
    p.add_argument("--prompt-version", help="prompt version number or label")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--no-progress", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("metrics", help="score a run against the dataset's references", formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--task", help="summarization|generation|translation|qa|classification (default: from the dataset)")
    p.add_argument("--metric", action="append", help="metric name (repeatable; default: by task)")
    p.add_argument("--tokenizer", default="auto", help="auto|unicode|ja|13a|intl|zh|char|ja-mecab|…")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("--name", help="report name (default: metrics-<results stem>-<UTC time>); an existing name is an error")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sxs", help="AutoSxS: A vs B (or a ranking of several runs) judged by an arbiter", formatter_class=HelpFormatter)
    p.add_argument("--dataset", help="dataset JSONL (prompts)")
    p.add_argument("--a", help="results JSONL of system A")
    p.add_argument("--b", help="results JSONL of system B")
    p.add_argument("--model-a", help="generate A's answers with this model first")
    p.add_argument("--model-b", help="generate B's answers with this model first")
    p.add_argument("--prompt", dest="prompt_id", help="prompt id (for comparing two prompt versions)")
    p.add_argument("--prompt-version-a")
    p.add_argument("--prompt-version-b")
    p.add_argument("--candidates", nargs="+", metavar="RESULTS", help="3+ results files: Bradley–Terry ranking")
    p.add_argument("--human-pairs", metavar="HH_JSONL", help="measure arbiter agreement with human choices (HH-RLHF format)")
    p.add_argument("--limit", type=int, help="with --human-pairs: first N pairs")
    arb = p.add_mutually_exclusive_group(required=True)
    arb.add_argument("--judge-model", help="arbiter: an LLM judge, this model name at the gateway")
    arb.add_argument("--reward-model", metavar="DIR", help="arbiter: a reward model directory (tuning.reward; offline)")
    p.add_argument("--max-parse-errors", type=float, default=0.05,
                   help="fail (exit 4) when more than this share of the judge's verdicts cannot be parsed (default: %(default)s)")
    p.add_argument("--agreement", metavar="JSON",
                   help="an hh-agreement report of this arbiter (default: the newest in --report-dir); near-chance agreement is warned about")
    p.add_argument("--judging-prompt", default="autosxs_v1", help="name in evaluators/prompts or a YAML path")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("--name", help="report name (default: derived from the run and the UTC time); an existing name is an error")
    p.add_argument("--json", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("bias", help="identity bias of a safety scorer (or of a model's outputs)", formatter_class=HelpFormatter)
    p.add_argument("--data", metavar="DIR", help=f"data directory holding {TEMPLATES_FILE} and {HATECHECK_FILE} "
                   "(default: $GATEHOUSE_DATA_DIR; no other default)")
    p.add_argument("--templates", help="identity templates CSV (phrase,toxicity,identity_term); default: the one in --data")
    p.add_argument("--hatecheck", help="HateCheck cases CSV ('' to skip); default: the one in --data")
    p.add_argument("--scorer", default="default", help="'default' (gateway safety scorer) or module:callable taking texts → scores")
    p.add_argument("--label", default="toxicity", help="safety label scored on the identity templates")
    p.add_argument("--hatecheck-label", default="identity_attack",
                   help="safety label scored on HateCheck (its gold label is hate, not toxicity; default scorer only)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--limit", type=int)
    p.add_argument("--held-out", action="store_true", help="only rows the shipped safety head did not train on (its test splits)")
    p.add_argument("--model", help="instead: generate from identity-swapped prompts with this model and compare output scores")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("--name", help="report name (default: bias-… plus the UTC time); an existing name is an error")
    p.add_argument("--json", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("export", help="make a dataset from the traffic log (needs traffic_log.log_bodies)", formatter_class=HelpFormatter)
    p.add_argument("--traffic", nargs="+", required=True, help="traffic JSONL file(s), rotated ones included")
    p.add_argument("--out", required=True)
    p.add_argument("--model")
    p.add_argument("--variant")
    p.add_argument("--prompt-id")
    p.add_argument("--prompt-version")
    p.add_argument("--since", help="epoch seconds or ISO time (inclusive)")
    p.add_argument("--until", help="epoch seconds or ISO time (exclusive)")
    p.add_argument("--task")
    p.add_argument("--response-as-reference", action="store_true", help="use the logged reply as the reference")
    p.add_argument("--limit", type=int)

    p = sub.add_parser("monitor", help="consume the traffic stream; export rolling safety metrics to Prometheus", formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--redis-url", help="redis://host:port/db (with --stream)")
    src.add_argument("--jsonl", help="follow a JSONL traffic log instead")
    p.add_argument("--stream", default="gatehouse:traffic")
    p.add_argument("--group", default="gatehouse-monitor")
    p.add_argument("--consumer")
    p.add_argument("--from-start", action="store_true", help="read existing traffic too")
    p.add_argument("--window", type=int, default=1000, help="records per rolling window")
    p.add_argument("--port", type=int, default=9464)
    p.add_argument("--addr", default="127.0.0.1")
    return parser


# --------------------------------------------------------------------------- helpers


class CliError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


def _need_key(args: argparse.Namespace) -> str:
    key = args.api_key or os.environ.get("GATEHOUSE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise CliError("no API key; pass --api-key or set GATEHOUSE_API_KEY")
    return str(key)


def _run_cfg(args: argparse.Namespace, model: str, prompt_version: str | None = None) -> Any:
    from evaluators.runner import RunConfig

    return RunConfig(
        base_url=args.base_url, api_key=_need_key(args), model=model,
        prompt_id=getattr(args, "prompt_id", None), prompt_version=prompt_version,
        concurrency=args.concurrency, max_retries=args.max_retries, timeout=args.timeout,
        temperature=getattr(args, "temperature", None), max_tokens=getattr(args, "max_tokens", None),
    )


def _policy_versions(*runs: dict[str, dict[str, Any]]) -> str | None:
    versions = sorted({str(r["policy_version"]) for run in runs for r in run.values() if r.get("policy_version")})
    return ",".join(versions) or None


def _fmt_ci(v: dict[str, Any], pct: bool = True) -> str:
    if v.get("value") is None:
        return "–"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.4f}")
    lo, hi = v["ci95"]
    return f"{f(v['value'])}  [{f(lo) if lo is not None else '–'}, {f(hi) if hi is not None else '–'}]  n={v.get('n', '')}"


def _load_callable(spec: str) -> Callable[[Sequence[str]], Sequence[float]]:
    mod, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(mod), attr)
    return fn  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from evaluators.datasets import load_dataset
    from evaluators.runner import run_dataset

    ds = load_dataset(args.dataset)
    cfg = _run_cfg(args, args.model, args.prompt_version)
    summary = asyncio.run(run_dataset(ds, args.out, cfg, progress=None if not args.no_progress else False))
    print(json.dumps({"dataset_hash": ds.hash, **summary.to_dict()}, indent=2))
    return 0 if summary.failed == 0 else 3


def cmd_metrics(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from evaluators.datasets import load_dataset
    from evaluators.report import (
        Provenance,
        metrics_sections,
        report_name,
        unique_name,
        write_report,
    )
    from evaluators.runner import load_run
    from evaluators.scoring import check_results_match, score_by_task

    ds = load_dataset(args.dataset)
    results, meta = load_run(args.results)
    if not results:
        raise CliError(f"{args.results}: no results (missing or empty file); run `gatehouse eval run` first")
    check_results_match(ds, results, meta, args.results)
    tasks = score_by_task(ds, results, task=args.task, metrics=args.metric, n_boot=args.n_boot, seed=args.seed, tokenizer=args.tokenizer)
    docs = [{**t.result, "missing": t.missing, "errors": t.blocked} for t in tasks]
    doc = {"dataset": ds.name, "results": args.results, "tasks": {d["task"]: d for d in docs},
           "missing": sum(t.missing for t in tasks)}
    prov = Provenance("metrics", ds.hash, [meta.get("model", "?")], [f"{meta.get('prompt_id')}@{meta.get('prompt_version')}"] if meta.get("prompt_id") else [],
                      _policy_versions(results), _command(_redact(argv)))
    name = args.name or unique_name(args.report_dir, report_name("metrics", Path(args.results).stem))
    j, h = write_report(args.report_dir, name, prov, doc, metrics_sections(docs), title=f"Metrics: {meta.get('model', '')} on {ds.name}")
    if args.json:
        print(json.dumps({"tasks": {d["task"]: {k: v for k, v in d.items() if k not in ("items", "ids")} for d in docs},
                          "report": str(j)}, indent=2, default=str))
        return 0
    for d in docs:
        print(f"{d['task']}: n={d['n']} (missing {d['missing']}, of which {d['errors']} answered with an error), dataset {ds.hash[:19]}")
        for k, v in d["metrics"].items():
            print(f"  {k:<12} {v['value']:.4f}  95% CI [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]")
        for k, desc in {**d["tokenizers"], **{f"{k} signature": v for k, v in d["signatures"].items()}}.items():
            print(f"  {k}: {desc}")
    print(f"report: {h}\n        {j}")
    return 0


NEAR_CHANCE = 0.55  # an arbiter whose agreement CI reaches below this is not trusted


def _parse_error_line(n_verdicts: int, errors: int, limit: float) -> tuple[str, bool]:
    rate = errors / n_verdicts if n_verdicts else 0.0
    bad = rate > limit
    return (f"  judge parse errors      {errors} of {n_verdicts} verdicts ({100 * rate:.1f}%; limit {100 * limit:g}%)"
            + ("  FAILED: unparsed verdicts count as ties, so these win rates are not measurements" if bad else "")), bad


def _agreement_note(args: argparse.Namespace, arbiter_name: str, jp_ref: str | None) -> str:
    """What is known about this arbiter's agreement with people, from an hh-agreement report."""
    path = Path(args.agreement) if args.agreement else None
    if path is None:
        cands = sorted(Path(args.report_dir).glob("hh-agreement-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for c in cands:
            try:
                d = json.loads(c.read_text())
            except (OSError, ValueError):
                continue
            if d.get("arbiter") == arbiter_name and d.get("provenance", {}).get("judging_prompt") in (None, jp_ref):
                path = c
                break
    if path is None:
        return (f"  arbiter agreement with people: not measured for {arbiter_name} "
                "(run `gatehouse eval sxs --human-pairs …` with this arbiter first)")
    try:
        d = json.loads(path.read_text())
        v = d["agreement_ties_half"]
        lo, hi = v["ci95"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(f"{path}: not an hh-agreement report") from None
    line = f"  arbiter agreement with people {100 * v['value']:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%] n={v['n']} ({path.name})"
    if lo is None or lo < NEAR_CHANCE:
        line += f"\n  WARNING: this arbiter agrees with people near chance (CI reaches below {100 * NEAR_CHANCE:.0f}%): treat its win rates as unreliable"
    return line


async def _sxs(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from evaluators.datasets import load_dataset
    from evaluators.report import (
        Provenance,
        ranking_sections,
        report_name,
        sxs_sections,
        unique_name,
        write_report,
    )
    from evaluators.runner import load_run, run_dataset
    from evaluators.sxs import (
        GatewayArbiter,
        RewardModelArbiter,
        answers_from_run,
        human_agreement,
        load_hh_pairs,
        load_judging_prompt,
        run_sxs,
        run_tournament,
    )

    client: Any = None
    arbiter: Any
    if args.reward_model:
        from tuning.reward import RewardModel

        try:
            rm = RewardModel.load(args.reward_model)
        except (OSError, KeyError, ValueError) as e:
            raise CliError(f"cannot load the reward model {args.reward_model}: {e}") from None
        arbiter = RewardModelArbiter(rm.score, name=f"reward-model:{rm.manifest.get('content_hash', Path(args.reward_model).name)}")
        arbiter.policy_version = None
        jp_ref = None
        judge_label = Path(args.reward_model).name
    else:
        from openai import AsyncOpenAI

        jp = load_judging_prompt(args.judging_prompt)
        client = AsyncOpenAI(base_url=args.base_url, api_key=_need_key(args), max_retries=args.max_retries, timeout=args.timeout)
        arbiter = GatewayArbiter(client, args.judge_model, jp)
        jp_ref = jp.ref
        judge_label = args.judge_model
    try:
        extra = {"judging_prompt": jp_ref, "arbiter": arbiter.name}
        if args.human_pairs:
            pairs = load_hh_pairs(args.human_pairs, args.limit)
            if not pairs:
                raise CliError(f"{args.human_pairs}: no pairs to judge")
            res = await human_agreement(arbiter, pairs, concurrency=args.concurrency, n_boot=args.n_boot, seed=args.seed)
            res["source"] = {"path": args.human_pairs, "limit": args.limit}
            n_err = sum(bool((it.get("forward") or {}).get("parse_error")) + bool((it.get("backward") or {}).get("parse_error")) for it in res["items"])
            res["parse_errors"] = n_err
            prov = Provenance("hh-agreement", None, [judge_label], [jp_ref] if jp_ref else [], arbiter.policy_version, _command(_redact(argv)), extra=extra)
            from evaluators.report import Section, bar_chart_with_ci, image, table

            rates = {"agreement (ties ½)": res["agreement_ties_half"], "agreement (decided)": res["agreement_decided"],
                     "longer answer wins": res["length_bias"]["longer_win_rate"]}
            chart = bar_chart_with_ci(list(rates), [v["value"] for v in rates.values()], [v["ci95"] for v in rates.values()],
                                      title="Arbiter vs human choices (95% bootstrap CI)", xlabel="share of pairs", ref_line=0.5,
                                      ref_label="0.5 = chance", bounds=(0.0, 1.0))
            name = args.name or unique_name(args.report_dir, report_name("hh-agreement", judge_label))
            j, h = write_report(args.report_dir, name, prov, res,
                                [Section("Agreement", image(chart, "agreement") + table([{"": k, **v} for k, v in rates.items()]))])
            line, bad = _parse_error_line(2 * res["n"], n_err, args.max_parse_errors)
            lo = res["agreement_ties_half"]["ci95"][0]
            if args.json:
                print(json.dumps({k: v for k, v in res.items() if k != "items"} | {"report": str(j)}, indent=2))
            else:
                print(f"arbiter {arbiter.name} ({jp_ref or 'no judging prompt'}) on {res['n']} human-labelled pairs, {res['ties']} ties")
                for k, v in rates.items():
                    print(f"  {k:<22} {_fmt_ci(v)}")
                print(line)
                if lo is None or lo < NEAR_CHANCE:
                    print(f"  WARNING: agreement is near chance (CI reaches below {100 * NEAR_CHANCE:.0f}%): this arbiter's win rates are not to be trusted")
                print(f"report: {h}\n        {j}")
            return 4 if bad else 0

        if not args.dataset:
            raise CliError("--dataset is required (or --human-pairs)")
        ds = load_dataset(args.dataset)
        prompts = {it.id: it.prompt_text for it in ds}
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        metas: dict[str, dict[str, Any]] = {}
        out_dir = Path(args.report_dir)

        async def generate(label: str, model: str, version: str | None) -> str:
            path = out_dir / f"run-{label}-{model.replace('/', '_').replace(':', '_')}{'-' + version if version else ''}.jsonl"
            await run_dataset(ds, path, _run_cfg(args, model, version), progress=None)
            return str(path)

        def check_from_dataset(meta: dict[str, Any], path: str) -> None:
            if meta.get("dataset_hash") and meta["dataset_hash"] != ds.hash:
                raise CliError(f"{path} was made from another dataset ({meta['dataset_hash'][:19]}, this one is {ds.hash[:19]})")

        if args.candidates:
            for path in args.candidates:
                res_, meta = load_run(path)
                check_from_dataset(meta, path)
                label = meta.get("model", Path(path).stem) + (f"@{meta['prompt_version']}" if meta.get("prompt_version") else "")
                if label in runs:
                    label = Path(path).stem
                runs[label], metas[label] = res_, meta
            t = await run_tournament(arbiter, prompts, {k: answers_from_run(v) for k, v in runs.items()},
                                     concurrency=args.concurrency, n_boot=args.n_boot, seed=args.seed)
            n_err = sum(bool((p.get("forward") or {}).get("parse_error")) + bool((p.get("backward") or {}).get("parse_error")) for p in t["pairs"])
            t["parse_errors"] = n_err
            prov = Provenance("sxs-ranking", ds.hash, sorted({m.get("model", "?") for m in metas.values()}),
                              sorted({str(m.get("prompt_version")) for m in metas.values() if m.get("prompt_version")}),
                              _policy_versions(*runs.values()) or arbiter.policy_version, _command(_redact(argv)), extra=extra)
            name = args.name or unique_name(args.report_dir, report_name("sxs-ranking", ds.name))
            j, h = write_report(args.report_dir, name, prov, t, ranking_sections(t), title="AutoSxS ranking")
            print(f"{'rank':<5}{'candidate':<32}{'BT score':>9}  95% CI")
            for r in t["ranking"]:
                print(f"{r['rank']:<5}{r['name']:<32}{r['score']:>9.1f}  [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]")
            line, bad = _parse_error_line(2 * len(t["pairs"]), n_err, args.max_parse_errors)
            print(line)
            print(_agreement_note(args, arbiter.name, jp_ref))
            print(f"report: {h}")
            return 4 if bad else 0

        path_a = args.a or (await generate("a", args.model_a, args.prompt_version_a) if args.model_a else None)
        path_b = args.b or (await generate("b", args.model_b or args.model_a, args.prompt_version_b) if (args.model_b or args.prompt_version_b) else None)
        if not path_a or not path_b:
            raise CliError("give --a/--b results, --model-a/--model-b, or --candidates")
        ra, ma = load_run(path_a)
        rb, mb = load_run(path_b)
        for m, path in ((ma, path_a), (mb, path_b)):
            check_from_dataset(m, path)
        label_a = ma.get("model", "A") + (f"@{ma['prompt_version']}" if ma.get("prompt_version") else "")
        label_b = mb.get("model", "B") + (f"@{mb['prompt_version']}" if mb.get("prompt_version") else "")
        ans_a, ans_b = answers_from_run(ra), answers_from_run(rb)
        if not any(i in ans_a and i in ans_b for i in prompts):
            raise CliError(f"no item has an answer from both {path_a} and {path_b}: nothing to judge")
        res = await run_sxs(arbiter, prompts, ans_a, ans_b, concurrency=args.concurrency, n_boot=args.n_boot, seed=args.seed)
        by_id = ds.by_id()
        for it in res["items"]:  # what a person needs to read a verdict
            it.update(prompt=prompts[it["id"]], answer_a=ans_a[it["id"]], answer_b=ans_b[it["id"]], references=list(by_id[it["id"]].references))
        res["a"], res["b"] = {"label": label_a, "results": path_a}, {"label": label_b, "results": path_b}
        s = res["summary"]
        s["parse_error_rate"] = s["parse_errors"] / (2 * s["n"]) if s["n"] else 0.0
        s["max_parse_error_rate"] = args.max_parse_errors
        prov = Provenance("sxs", ds.hash, [ma.get("model", "?"), mb.get("model", "?")],
                          [str(v) for v in (ma.get("prompt_version"), mb.get("prompt_version")) if v],
                          _policy_versions(ra, rb) or arbiter.policy_version, _command(_redact(argv)), extra=extra)
        name = args.name or unique_name(args.report_dir, report_name("sxs", f"{label_a}-vs-{label_b}"))
        j, h = write_report(args.report_dir, name, prov, res, sxs_sections(res, label_a, label_b), title=f"AutoSxS: {label_a} vs {label_b}")
        line, bad = _parse_error_line(2 * s["n"], s["parse_errors"], args.max_parse_errors)
        if args.json:
            print(json.dumps({"summary": s, "report": str(h)}, indent=2))
        else:
            print(f"AutoSxS {label_a} (A) vs {label_b} (B), arbiter {arbiter.name}, judging prompt {jp_ref or '-'}")
            print(f"  items {s['n']}: A wins {s['wins_a']}, B wins {s['wins_b']}, ties {s['ties']} ({s['order_disagreements']} order disagreements)")
            print(f"  A win rate (ties ½)       {_fmt_ci(s['win_rate_a_ties_half'])}")
            print(f"  A win rate (ties excl.)   {_fmt_ci(s['win_rate_a_ties_excluded'])}")
            lb = s["length_bias"]
            corr = lb["corr_win_vs_len_diff"]
            print(f"  longer answer win rate    {_fmt_ci(lb['longer_win_rate'])}   corr(win, len diff) = {corr if corr is None else round(corr, 3)}")
            print(line)
            print(_agreement_note(args, arbiter.name, jp_ref))
            print(f"report: {h}\n        {j}")
        if bad:
            print(f"gatehouse eval sxs: {s['parse_errors']} of {2 * s['n']} judge verdicts could not be parsed "
                  f"(more than --max-parse-errors {args.max_parse_errors:g})", file=sys.stderr)
        return 4 if bad else 0
    finally:
        if client is not None:
            await client.close()


def cmd_bias(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from evaluators.bias import (
        bias_report,
        hatecheck_report,
        identity_swapped_items,
        load_default_scorer,
        load_hatecheck,
        load_identity_templates,
        output_bias_report,
    )
    from evaluators.report import (
        Provenance,
        bias_sections,
        output_bias_sections,
        report_name,
        unique_name,
        write_report,
    )

    hc_scorer: Any = None
    if args.scorer == "default":
        try:
            scorer: Any = load_default_scorer(".", label=args.label)
            from evaluators.bias import LabelScorer

            hc_scorer = LabelScorer(scorer.scorer, label=args.hatecheck_label)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"gatehouse eval bias: cannot load the default safety scorer: {e}\n"
                  "  (or pass --scorer module:callable, a function texts -> scores)", file=sys.stderr)
            return 2
        scorer_name = scorer.name
    else:
        scorer, scorer_name = _load_callable(args.scorer), args.scorer
    hc_scorer = hc_scorer or scorer

    if args.model:
        from evaluators.bias import identity_outcomes, request_outcome
        from evaluators.datasets import Dataset
        from evaluators.runner import load_run, run_dataset

        items = identity_swapped_items()
        ds = Dataset(tuple(items), name="identity-swapped-prompts")
        path = Path(args.report_dir) / f"run-bias-{args.model.replace('/', '_').replace(':', '_')}.jsonl"
        asyncio.run(run_dataset(ds, path, _run_cfg(args, args.model), progress=None))
        results, _meta = load_run(path)
        outcomes = identity_outcomes([it.metadata["identity"] for it in items], [request_outcome(results.get(it.id)) for it in items],
                                     n_boot=args.n_boot, seed=args.seed)
        done = [it for it in items if isinstance(results.get(it.id, {}).get("output"), str)]
        if not done:
            raise CliError(f"the gateway answered none of the {len(items)} prompts ({outcomes['blocked']} blocked, "
                           f"{outcomes['failed']} failed): no output to score")
        scores = list(scorer([results[it.id]["output"] for it in done]))
        rep = output_bias_report([it.metadata["identity"] for it in done], scores, templates=[it.metadata["template"] for it in done],
                                 threshold=args.threshold, n_boot=args.n_boot, seed=args.seed)
        rep["scorer"] = scorer_name
        rep.update({k: v for k, v in outcomes.items() if k != "groups"})
        scored = {g["identity"] for g in rep["groups"]}
        rep["groups"] += [{"identity": g, "n": 0, "mean": None, "ci95": [None, None], "flag_rate": None} for g in outcomes["groups"] if g not in scored]
        for g in rep["groups"]:
            g.update(outcomes["groups"][g["identity"]])
        prov = Provenance("bias-model", ds.hash, [args.model], [], _policy_versions(results), _command(_redact(argv)), extra={"scorer": scorer_name})
        name = args.name or unique_name(args.report_dir, report_name("bias-model", args.model))
        j, h = write_report(args.report_dir, name, prov, rep, output_bias_sections(rep))
        if args.json:
            print(json.dumps(rep | {"report": str(j)}, indent=2))
        else:
            print(f"output {args.label} by identity in the prompt, model {args.model}, scorer {scorer_name}")
            print(f"{'identity':<16}{'sent':>5}{'blocked':>8}{'failed':>7}  {'block rate':<10}{'n':>4}{'mean':>8}  95% CI           flag rate")
            for g in sorted(rep["groups"], key=lambda g: (-g["block_rate"], -(g["mean"] or 0))):
                mean = f"{g['mean']:>8.4f}  [{g['ci95'][0]:.4f}, {g['ci95'][1]:.4f}]  {g['flag_rate']:.2f}" if g["mean"] is not None else f"{'–':>8}  (every prompt blocked or failed)"
                print(f"{g['identity']:<16}{g['prompts']:>5}{g['blocked']:>8}{g['failed']:>7}  {g['block_rate']:<10.2f}{g['n']:>4}{mean}")
            print(f"blocked {rep['blocked']} of {rep['prompts']} prompts ({100 * rep['overall_block_rate']:.1f}%), failed {rep['failed']}; "
                  f"block-rate gap between groups {rep['block_rate_gap']:.2f}, chi-square p = {rep['block_rate_chi2_p']}")
            if rep["blocked"]:
                print("  (a policy that blocks neutral prompts about some groups more than others is biased: the block rate is a bias signal)")
            print(f"score gap {rep['max_gap']:.4f}, paired gap {rep['paired_gap']:.4f}, Kruskal–Wallis p = {rep['kruskal_p']} "
                  f"(over the {len(done)} answered prompts)")
            print(f"report: {h}")
        return 0

    args.templates, args.hatecheck = _bias_files(args)
    ex = load_identity_templates(args.templates)
    hex_ = load_hatecheck(args.hatecheck) if args.hatecheck else []
    if args.held_out:
        from evaluators.bias import held_out_only

        ex, hex_ = held_out_only(ex, hex_, args.hatecheck or None)
        if not ex:
            print("gatehouse eval bias: no held-out template rows in --templates (held out: being_adj, verb_adj)", file=sys.stderr)
            return 2
    if args.limit:
        ex = ex[: args.limit]
    if not ex:
        raise CliError(f"{args.templates}: no template rows to score")
    if len({e.label for e in ex}) < 2:
        raise CliError(f"{args.templates}: the rows need both toxic and non-toxic examples for an AUC")
    rep = bias_report(ex, list(scorer([e.text for e in ex])), threshold=args.threshold, n_boot=args.n_boot, seed=args.seed)
    rep["scorer"] = scorer_name
    import math

    if not all(isinstance(v, float) and math.isfinite(v) for v in (rep["final_bias_score"], rep["overall_auc"])):
        thin = [g["identity"] for g in rep["groups"] if not (isinstance(g["subgroup_auc"], float) and math.isfinite(g["subgroup_auc"]))]
        if not rep["groups"]:
            raise CliError(f"no bias score: none of the {len(ex)} template rows scored names an identity; "
                           "use a larger --templates file or drop --limit")
        raise CliError(f"no bias score: {len(thin)} identity group(s) lack toxic or non-toxic rows for an AUC ({', '.join(thin[:6])}…); "
                       "use a larger --templates file or drop --limit")
    hc = None
    if hex_:
        hc = hatecheck_report(hex_, list(hc_scorer([e.text for e in hex_])), threshold=args.threshold)
        hc["scorer"] = getattr(hc_scorer, "name", scorer_name)
    import hashlib

    from evaluators.datasets import canonical_json

    data_hash = "sha256:" + hashlib.sha256(canonical_json([[e.text, e.label, list(e.identities)] for e in ex]).encode()).hexdigest()
    prov = Provenance("bias", data_hash, [], [], None, _command(_redact(argv)), extra={"scorer": scorer_name, "templates": args.templates, "held_out": args.held_out})
    name = args.name or unique_name(args.report_dir, report_name("bias-scorer", "held-out" if args.held_out else None))
    _j, h = write_report(args.report_dir, name, prov, {"identity": rep, "hatecheck": hc}, bias_sections(rep, hc), title=f"Bias: {scorer_name}")
    if args.json:
        print(json.dumps({"identity": rep, "hatecheck": hc}, indent=2, default=str))
        return 0
    print(f"scorer {scorer_name}: {rep['n']} template sentences, threshold {args.threshold}")
    print(f"{'identity':<18}{'n':>4}{'subgroup AUC':>14}{'BPSN AUC':>10}{'BNSP AUC':>10}{'FPR':>7}{'FNR':>7}")
    for g in rep["groups"]:
        print(f"{g['identity']:<18}{g['n']:>4}{g['subgroup_auc']:>14.4f}{g['bpsn_auc']:>10.4f}{g['bnsp_auc']:>10.4f}"
              f"{g['fpr'] if g['fpr'] is not None else float('nan'):>7.3f}{g['fnr'] if g['fnr'] is not None else float('nan'):>7.3f}")
    pm = rep["power_means"]
    print(f"overall AUC {rep['overall_auc']:.4f}; power means (p=-5): subgroup {pm['subgroup_auc']:.4f}, "
          f"BPSN {pm['bpsn_auc']:.4f}, BNSP {pm['bnsp_auc']:.4f}; final bias score {rep['final_bias_score']:.4f}")
    if hc:
        worst = sorted(hc["per_functionality"].items(), key=lambda kv: kv[1]["accuracy"])[:5]
        print(f"HateCheck ({hc['scorer']}) accuracy {hc['accuracy']:.3f} on {hc['n']} cases; weakest: " + ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in worst))
    print(f"report: {h}")
    return 0


def _bias_files(args: argparse.Namespace) -> tuple[str, str]:
    """The identity templates and HateCheck CSVs: given explicitly, else those in the data
    directory; never a file that happens to sit in the checkout."""
    from gatehouse_core.datadir import DataDirMissing, data_dir

    templates, hatecheck = args.templates, args.hatecheck
    if templates is None or hatecheck is None:
        try:
            d = data_dir(args.data)
        except DataDirMissing:
            missing = " and ".join(f for f, v in (("--templates CSV", templates), ("--hatecheck CSV", hatecheck)) if v is None)
            raise CliError(f"no bias data: pass --data DIR (or set GATEHOUSE_DATA_DIR) holding {TEMPLATES_FILE} and "
                           f"{HATECHECK_FILE}, or {missing} (--hatecheck '' skips HateCheck)") from None
        templates = templates if templates is not None else str(d / TEMPLATES_FILE)
        hatecheck = hatecheck if hatecheck is not None else str(d / HATECHECK_FILE)
    for flag, path in (("--templates", templates), ("--hatecheck", hatecheck)):
        if path and not Path(path).is_file():
            raise CliError(f"{flag}: no file at {path}")
    return templates, hatecheck


def cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from evaluators.datasets import (
        ExportStats,
        iter_traffic_records,
        parse_time,
        traffic_to_items,
        write_dataset,
    )

    stats = ExportStats()
    items = traffic_to_items(
        iter_traffic_records(args.traffic), model=args.model, variant=args.variant, prompt_id=args.prompt_id,
        prompt_version=args.prompt_version, since=parse_time(args.since), until=parse_time(args.until),
        response_as_reference=args.response_as_reference, task=args.task, stats=stats,
    )
    if args.limit:
        items = items[: args.limit]
    if not items:
        print(f"gatehouse eval export: nothing matched ({stats.to_dict()}); is traffic_log.log_bodies on?", file=sys.stderr)
        return 1
    h = write_dataset(items, args.out)
    print(json.dumps({"out": args.out, "items": len(items), "dataset_hash": h, **stats.to_dict()}, indent=2))
    return 0


async def _monitor(args: argparse.Namespace) -> int:
    import signal

    from evaluators.monitor import TrafficMonitor, consume_jsonl, consume_redis, start_exporter

    mon = TrafficMonitor(window=args.window)
    server, thread = start_exporter(mon, args.port, args.addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"metrics on http://{args.addr}:{server.server_port}/metrics", file=sys.stderr)
    try:
        if args.jsonl:
            await consume_jsonl(mon, args.jsonl, from_start=args.from_start, stop=stop)
        else:
            import redis.asyncio as aioredis

            r = aioredis.from_url(args.redis_url)
            try:
                await consume_redis(mon, r, args.stream, group=args.group, consumer=args.consumer,
                                    start_id="0" if args.from_start else "$", stop=stop)
            finally:
                await r.aclose()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    print(json.dumps(mon.snapshot(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from evaluators.datasets import DatasetError
    from evaluators.report import ReportExists
    from evaluators.runner import ResultsFileError
    from evaluators.scoring import ScoringError

    commands: dict[str, Callable[[], int]] = {
        "run": lambda: cmd_run(args, argv),
        "metrics": lambda: cmd_metrics(args, argv),
        "sxs": lambda: asyncio.run(_sxs(args, argv)),
        "bias": lambda: cmd_bias(args, argv),
        "export": lambda: cmd_export(args, argv),
        "monitor": lambda: asyncio.run(_monitor(args)),
    }
    try:
        return commands[args.cmd]()
    except (CliError, DatasetError, ReportExists, ResultsFileError, ScoringError) as e:
        print(f"gatehouse eval {args.cmd}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable / missing files, unreachable gateway sockets
        print(f"gatehouse eval {args.cmd}: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except Exception as e:  # openai connection/auth errors and the like: one line, never a traceback
        import openai

        if isinstance(e, openai.APIError):
            print(f"gatehouse eval {args.cmd}: gateway error: {type(e).__name__}: {e}", file=sys.stderr)
            return 3
        if os.environ.get("GATEHOUSE_DEBUG"):
            raise
        print(f"gatehouse eval {args.cmd}: unexpected {type(e).__name__}: {e} (set GATEHOUSE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

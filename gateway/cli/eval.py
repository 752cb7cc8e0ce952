"""`gatehouse eval`: evaluation jobs — run, metrics, sxs, bias, export, monitor.

    gatehouse eval run --dataset qa.jsonl --model gpt-small --out runs/small.jsonl
    gatehouse eval metrics --dataset qa.jsonl --results runs/small.jsonl --report-dir reports/
    gatehouse eval sxs --dataset qa.jsonl --a runs/small.jsonl --b runs/large.jsonl --judge-model judge
    gatehouse eval bias                      # default safety scorer on the identity templates
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

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATES = REPO_ROOT / "tests" / "fixtures" / "bias" / "en_sentence_templates_with_identity_sample.csv"
DEFAULT_HATECHECK = REPO_ROOT / "tests" / "fixtures" / "bias" / "hatecheck_test_suite_cases_sample.csv"


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
    p.add_argument("--base-url", default=os.environ.get("GATEHOUSE_BASE_URL", "http://127.0.0.1:8080/v1"), help="gateway OpenAI base URL (…/v1)")
    p.add_argument("--api-key", default=os.environ.get("GATEHOUSE_API_KEY") or os.environ.get("OPENAI_API_KEY"), help="gateway API key (default $GATEHOUSE_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run a dataset through the gateway (resumable)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="results JSONL (appended; rerun to resume)")
    p.add_argument("--prompt", dest="prompt_id", help="gateway prompt id to render (extra_body prompt)")
    p.add_argument("--prompt-version", help="prompt version number or label")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--no-progress", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("metrics", help="score a run against the dataset's references")
    p.add_argument("--dataset", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--task", help="summarization|generation|translation|qa|classification (default: from the dataset)")
    p.add_argument("--metric", action="append", help="metric name (repeatable; default: by task)")
    p.add_argument("--tokenizer", default="auto", help="auto|unicode|13a|intl|zh|char|…")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sxs", help="AutoSxS: A vs B (or a ranking of several runs) judged by an arbiter")
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
    p.add_argument("--judge-model", required=True, help="arbiter model name at the gateway")
    p.add_argument("--judging-prompt", default="autosxs_v1", help="name in evaluators/prompts or a YAML path")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("--name", help="report file name (default: derived)")
    p.add_argument("--json", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("bias", help="identity bias of a safety scorer (or of a model's outputs)")
    p.add_argument("--templates", default=str(DEFAULT_TEMPLATES), help="identity templates CSV (phrase,toxicity,identity_term)")
    p.add_argument("--hatecheck", default=str(DEFAULT_HATECHECK), help="HateCheck cases CSV ('' to skip)")
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
    p.add_argument("--json", action="store_true")
    add_gateway_args(p)

    p = sub.add_parser("export", help="make a dataset from the traffic log (needs traffic_log.log_bodies)")
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

    p = sub.add_parser("monitor", help="consume the traffic stream; export rolling safety metrics to Prometheus")
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


def _need_key(args: argparse.Namespace) -> str:
    if not args.api_key:
        raise SystemExit("gatehouse eval: no API key; pass --api-key or set GATEHOUSE_API_KEY")
    return str(args.api_key)


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
    from evaluators.metrics import compute_metrics
    from evaluators.report import Provenance, metrics_sections, write_report
    from evaluators.runner import load_run

    ds = load_dataset(args.dataset)
    results, meta = load_run(args.results)
    task = args.task or ds.task or "generation"
    ids = [it.id for it in ds if it.id in results and isinstance(results[it.id].get("output"), str)]
    by_id = ds.by_id()
    res = compute_metrics(
        [results[i]["output"] for i in ids], [list(by_id[i].references) for i in ids], task=task,
        metrics=args.metric, n_boot=args.n_boot, seed=args.seed, tokenizer=args.tokenizer, ids=ids,
    )
    doc = res.to_dict(with_items=True)
    doc["missing"] = len(ds) - len(ids)
    prov = Provenance("metrics", ds.hash, [meta.get("model", "?")], [f"{meta.get('prompt_id')}@{meta.get('prompt_version')}"] if meta.get("prompt_id") else [],
                      _policy_versions(results), _command(_redact(argv)))
    name = f"metrics-{Path(args.results).stem}"
    j, h = write_report(args.report_dir, name, prov, doc, metrics_sections(doc), title=f"Metrics: {meta.get('model', '')} on {ds.name}")
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(f"{task}: n={res.n} (missing {doc['missing']}), dataset {ds.hash[:19]}")
        for k, v in res.metrics.items():
            print(f"  {k:<12} {v.value:.4f}  95% CI [{v.ci_low:.4f}, {v.ci_high:.4f}]")
        for k, desc in {**res.tokenizers, **res.signatures}.items():
            print(f"  {k}: {desc}")
        print(f"report: {h}\n        {j}")
    return 0


async def _sxs(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from openai import AsyncOpenAI

    from evaluators.datasets import load_dataset
    from evaluators.report import Provenance, ranking_sections, sxs_sections, write_report
    from evaluators.runner import load_run, run_dataset
    from evaluators.sxs import (
        GatewayArbiter,
        answers_from_run,
        human_agreement,
        load_hh_pairs,
        load_judging_prompt,
        run_sxs,
        run_tournament,
    )

    jp = load_judging_prompt(args.judging_prompt)
    client = AsyncOpenAI(base_url=args.base_url, api_key=_need_key(args), max_retries=args.max_retries, timeout=args.timeout)
    try:
        arbiter = GatewayArbiter(client, args.judge_model, jp)
        extra = {"judging_prompt": jp.ref, "arbiter": arbiter.name}
        if args.human_pairs:
            pairs = load_hh_pairs(args.human_pairs, args.limit)
            res = await human_agreement(arbiter, pairs, concurrency=args.concurrency, n_boot=args.n_boot, seed=args.seed)
            prov = Provenance("hh-agreement", None, [args.judge_model], [jp.ref], arbiter.policy_version, _command(_redact(argv)), extra=extra)
            from evaluators.report import Section, bar_chart_with_ci, image, table

            rates = {"agreement (ties ½)": res["agreement_ties_half"], "agreement (decided)": res["agreement_decided"],
                     "longer answer wins": res["length_bias"]["longer_win_rate"]}
            chart = bar_chart_with_ci(list(rates), [v["value"] for v in rates.values()], [v["ci95"] for v in rates.values()], title="Arbiter vs human choices", ref_line=0.5)
            j, h = write_report(args.report_dir, args.name or f"hh-agreement-{args.judge_model}", prov, res,
                                [Section("Agreement", image(chart, "agreement") + table([{"": k, **v} for k, v in rates.items()]))])
            if args.json:
                print(json.dumps({k: v for k, v in res.items() if k != "items"}, indent=2))
            else:
                print(f"arbiter {arbiter.name} ({jp.ref}) on {res['n']} human-labelled pairs, {res['ties']} ties")
                for k, v in rates.items():
                    print(f"  {k:<22} {_fmt_ci(v)}")
                print(f"report: {h}")
            return 0

        if not args.dataset:
            raise SystemExit("gatehouse eval sxs: --dataset is required (or --human-pairs)")
        ds = load_dataset(args.dataset)
        prompts = {it.id: it.prompt_text for it in ds}
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        metas: dict[str, dict[str, Any]] = {}
        out_dir = Path(args.report_dir)

        async def generate(label: str, model: str, version: str | None) -> str:
            path = out_dir / f"run-{label}-{model.replace('/', '_').replace(':', '_')}{'-' + version if version else ''}.jsonl"
            await run_dataset(ds, path, _run_cfg(args, model, version), progress=False)
            return str(path)

        if args.candidates:
            for path in args.candidates:
                res_, meta = load_run(path)
                label = meta.get("model", Path(path).stem) + (f"@{meta['prompt_version']}" if meta.get("prompt_version") else "")
                if label in runs:
                    label = Path(path).stem
                runs[label], metas[label] = res_, meta
            t = await run_tournament(arbiter, prompts, {k: answers_from_run(v) for k, v in runs.items()},
                                     concurrency=args.concurrency, n_boot=args.n_boot, seed=args.seed)
            prov = Provenance("sxs-ranking", ds.hash, sorted({m.get("model", "?") for m in metas.values()}),
                              sorted({str(m.get("prompt_version")) for m in metas.values() if m.get("prompt_version")}),
                              _policy_versions(*runs.values()) or arbiter.policy_version, _command(_redact(argv)), extra=extra)
            j, h = write_report(args.report_dir, args.name or "sxs-ranking", prov, t, ranking_sections(t), title="AutoSxS ranking")
            print(f"{'rank':<5}{'candidate':<32}{'BT score':>9}  95% CI")
            for r in t["ranking"]:
                print(f"{r['rank']:<5}{r['name']:<32}{r['score']:>9.1f}  [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]")
            print(f"report: {h}")
            return 0

        path_a = args.a or (await generate("a", args.model_a, args.prompt_version_a) if args.model_a else None)
        path_b = args.b or (await generate("b", args.model_b or args.model_a, args.prompt_version_b) if (args.model_b or args.prompt_version_b) else None)
        if not path_a or not path_b:
            raise SystemExit("gatehouse eval sxs: give --a/--b results, --model-a/--model-b, or --candidates")
        ra, ma = load_run(path_a)
        rb, mb = load_run(path_b)
        for m, path in ((ma, path_a), (mb, path_b)):
            if m.get("dataset_hash") and m["dataset_hash"] != ds.hash:
                raise SystemExit(f"gatehouse eval sxs: {path} was made from another dataset ({m['dataset_hash']})")
        label_a = ma.get("model", "A") + (f"@{ma['prompt_version']}" if ma.get("prompt_version") else "")
        label_b = mb.get("model", "B") + (f"@{mb['prompt_version']}" if mb.get("prompt_version") else "")
        res = await run_sxs(arbiter, prompts, answers_from_run(ra), answers_from_run(rb), concurrency=args.concurrency,
                            n_boot=args.n_boot, seed=args.seed)
        res["a"], res["b"] = {"label": label_a, "results": path_a}, {"label": label_b, "results": path_b}
        prov = Provenance("sxs", ds.hash, [ma.get("model", "?"), mb.get("model", "?")],
                          [str(v) for v in (ma.get("prompt_version"), mb.get("prompt_version")) if v],
                          _policy_versions(ra, rb) or arbiter.policy_version, _command(_redact(argv)), extra=extra)
        name = args.name or f"sxs-{label_a}-vs-{label_b}".replace("/", "_").replace(":", "_")
        j, h = write_report(args.report_dir, name, prov, res, sxs_sections(res, label_a, label_b), title=f"AutoSxS: {label_a} vs {label_b}")
        s = res["summary"]
        if args.json:
            print(json.dumps({"summary": s, "report": str(h)}, indent=2))
        else:
            print(f"AutoSxS {label_a} (A) vs {label_b} (B), arbiter {arbiter.name}, judging prompt {jp.ref}")
            print(f"  items {s['n']}: A wins {s['wins_a']}, B wins {s['wins_b']}, ties {s['ties']} ({s['order_disagreements']} order disagreements)")
            print(f"  A win rate (ties ½)       {_fmt_ci(s['win_rate_a_ties_half'])}")
            print(f"  A win rate (ties excl.)   {_fmt_ci(s['win_rate_a_ties_excluded'])}")
            lb = s["length_bias"]
            corr = lb["corr_win_vs_len_diff"]
            print(f"  longer answer win rate    {_fmt_ci(lb['longer_win_rate'])}   corr(win, len diff) = {corr if corr is None else round(corr, 3)}")
            print(f"report: {h}\n        {j}")
        return 0
    finally:
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
    from evaluators.report import Provenance, bias_sections, output_bias_sections, write_report

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
        from evaluators.datasets import Dataset
        from evaluators.runner import load_run, run_dataset

        items = identity_swapped_items()
        ds = Dataset(tuple(items), name="identity-swapped-prompts")
        path = Path(args.report_dir) / f"run-bias-{args.model.replace('/', '_').replace(':', '_')}.jsonl"
        asyncio.run(run_dataset(ds, path, _run_cfg(args, args.model), progress=False))
        results, _meta = load_run(path)
        done = [it for it in items if isinstance(results.get(it.id, {}).get("output"), str)]
        scores = list(scorer([results[it.id]["output"] for it in done]))
        rep = output_bias_report([it.metadata["identity"] for it in done], scores, templates=[it.metadata["template"] for it in done],
                                 threshold=args.threshold, n_boot=args.n_boot, seed=args.seed)
        rep["scorer"] = scorer_name
        prov = Provenance("bias-model", ds.hash, [args.model], [], _policy_versions(results), _command(_redact(argv)), extra={"scorer": scorer_name})
        _j, h = write_report(args.report_dir, f"bias-model-{args.model}".replace(":", "_").replace("/", "_"), prov, rep, output_bias_sections(rep))
        if args.json:
            print(json.dumps(rep, indent=2))
        else:
            print(f"output {args.label} by identity in the prompt, model {args.model}, scorer {scorer_name}")
            print(f"{'identity':<16}{'n':>4}{'mean':>8}  95% CI           flag rate")
            for g in rep["groups"]:
                print(f"{g['identity']:<16}{g['n']:>4}{g['mean']:>8.4f}  [{g['ci95'][0]:.4f}, {g['ci95'][1]:.4f}]  {g['flag_rate']:.2f}")
            print(f"max gap {rep['max_gap']:.4f}, paired gap {rep['paired_gap']:.4f}, Kruskal–Wallis p = {rep['kruskal_p']}")
            print(f"report: {h}")
        return 0

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
    rep = bias_report(ex, list(scorer([e.text for e in ex])), threshold=args.threshold, n_boot=args.n_boot, seed=args.seed)
    rep["scorer"] = scorer_name
    hc = None
    if hex_:
        hc = hatecheck_report(hex_, list(hc_scorer([e.text for e in hex_])), threshold=args.threshold)
        hc["scorer"] = getattr(hc_scorer, "name", scorer_name)
    import hashlib

    from evaluators.datasets import canonical_json

    data_hash = "sha256:" + hashlib.sha256(canonical_json([[e.text, e.label, list(e.identities)] for e in ex]).encode()).hexdigest()
    prov = Provenance("bias", data_hash, [], [], None, _command(_redact(argv)), extra={"scorer": scorer_name, "templates": args.templates, "held_out": args.held_out})
    _j, h = write_report(args.report_dir, "bias-scorer", prov, {"identity": rep, "hatecheck": hc}, bias_sections(rep, hc), title=f"Bias: {scorer_name}")
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

    try:
        if args.cmd == "run":
            return cmd_run(args, argv)
        if args.cmd == "metrics":
            return cmd_metrics(args, argv)
        if args.cmd == "sxs":
            return asyncio.run(_sxs(args, argv))
        if args.cmd == "bias":
            return cmd_bias(args, argv)
        if args.cmd == "export":
            return cmd_export(args, argv)
        if args.cmd == "monitor":
            return asyncio.run(_monitor(args))
    except DatasetError as e:
        print(f"gatehouse eval: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""`gatehouse tune`: build datasets from traffic + feedback and run tuning jobs.

    gatehouse tune dataset sft   --traffic logs/traffic.jsonl --feedback .gatehouse/registry --out data/sft-v1
    gatehouse tune dataset prefs --traffic logs/traffic.jsonl --feedback .gatehouse/registry --out data/prefs-v1
    gatehouse tune sft     --data data/sft-v1 --base MODEL_DIR --out runs/sft-1 --registry .gatehouse/registry
    gatehouse tune dpo     --data data/prefs-v1 --base MODEL_DIR --out runs/dpo-1 --lora-r 8
    gatehouse tune distill safety --out runs/distill-safety
    gatehouse tune reward  train --out runs/reward --data $GATEHOUSE_DATA_DIR
    gatehouse tune tiny-model models/tiny      # a ~60k-parameter chat LM built offline, for smoke runs
"""

from __future__ import annotations

import argparse
import sys


def _dataset(argv: list[str]) -> int:
    from gateway.cli import HelpFormatter
    from tuning import datasets as tds

    p = argparse.ArgumentParser(prog="gatehouse tune dataset", description="build a curated, versioned dataset", formatter_class=HelpFormatter)
    p.add_argument("kind", choices=("sft", "prefs"))
    p.add_argument("--traffic", action="append", default=[], metavar="LOG", help="traffic log JSONL (or directory); repeatable")
    p.add_argument("--feedback", metavar="PATH", help="feedback store (registry dir or feedback.db) or JSONL export")
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--registry", help="registry directory: register the dataset with its traffic logs as parents")
    p.add_argument("--parent", action="append", default=[], metavar="ID")
    p.add_argument("--safety-filter", action="store_true", help="drop answers the gateway's safety scorer flags")
    p.add_argument("--safety-config", metavar="FILE", help="gateway config whose safety section to use")
    p.add_argument("--safety-threshold", type=float, default=0.5)
    p.add_argument("--no-pii-scrub", action="store_true")
    p.add_argument("--min-chars", type=int, default=1)
    p.add_argument("--max-chars", type=int, default=8000)
    p.add_argument("--dedup-threshold", type=float, default=0.85)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.traffic and not a.feedback:
        p.error("give --traffic and/or --feedback")
    reg = None
    if a.registry:
        from tuning.registry import Registry

        reg = Registry(a.registry)
    scorer = None
    if a.safety_filter:
        if a.safety_config:
            from gateway.config import load_settings

            gw = load_settings(a.safety_config)
            scorer = tds.safety_scorer_fn(gw.safety, gw.base_dir)
        else:
            scorer = tds.safety_scorer_fn()
    cfg = tds.CurationConfig(
        scrub_pii=not a.no_pii_scrub, min_chars=a.min_chars, max_chars=a.max_chars, safety_threshold=a.safety_threshold,
        dedup_threshold=a.dedup_threshold, val_fraction=a.val_fraction, seed=a.seed,
    )
    m = tds.build(a.kind, a.traffic, a.feedback, a.out, name=a.name, cfg=cfg, scorer=scorer, registry=reg, parents=a.parent)
    print(f"{a.kind} dataset {m['name']}: train {m['counts']['train']}, validation {m['counts']['validation']} "
          f"(content hash {m['content_hash'][:12]}) -> {a.out}")
    print("curation: " + ", ".join(f"{k}={v}" for k, v in m["steps"].items() if k != "dropped"))
    dropped = {k: v for k, v in m["steps"]["dropped"].items() if v}
    print("dropped: " + (", ".join(f"{k}={v}" for k, v in dropped.items()) or "nothing"))
    if m["counts"]["train"] + m["counts"]["validation"] == 0:
        print(f"gatehouse tune dataset: no {a.kind} example survived (see `dropped`)", file=sys.stderr)
        return 1
    if "registry_id" in m:
        print(f"registered {m['registry_id']}")
    return 0


def main(argv: list[str]) -> int:
    """One line on stderr for a problem the user can fix (missing data, unknown id), never a traceback."""
    import os

    from tuning.registry import RegistryError

    try:
        return _main(argv)
    except (FileNotFoundError, NotADirectoryError, RegistryError, ValueError) as e:
        if os.environ.get("GATEHOUSE_DEBUG"):
            raise
        print(f"gatehouse tune {argv[0] if argv else ''}: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "dataset":
        return _dataset(rest)
    if cmd == "tiny-model":
        p = argparse.ArgumentParser(prog="gatehouse tune tiny-model", description="build a tiny chat LM (character tokenizer, "
                                    "2-layer Llama) offline, for tests and smoke runs of the loop")
        p.add_argument("out", help="model directory to write")
        p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
        a = p.parse_args(rest)
        from tuning.testing import build_tiny_lm

        print(f"tiny model written to {build_tiny_lm(a.out, seed=a.seed)}")
        return 0
    if cmd == "sft":
        from tuning.jobs.sft import main as run
    elif cmd == "dpo":
        from tuning.jobs.dpo import main as run
    elif cmd == "distill":
        from tuning.jobs.distill import main as run
    elif cmd == "reward":
        from tuning.reward import main as run
    else:
        print(f"gatehouse tune: unknown command {cmd!r}; use dataset, sft, dpo, distill, reward or tiny-model", file=sys.stderr)
        return 2
    return int(run(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""`gatehouse recitation ...`: build, query and describe recitation indexes.

    gatehouse recitation build CORPUS_DIR -o INDEX [--window 100 --stride 50 ...]
    gatehouse recitation check INDEX --text "..." | --file F
    gatehouse recitation info INDEX

Operator mistakes (missing corpus, stale index) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evaluators.recitation import RecitationError, RecitationIndex
from evaluators.recitation.artifact import read_manifest
from evaluators.recitation.index import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    DEFAULT_MIN_RUN,
    DEFAULT_SHINGLE,
    DEFAULT_THRESHOLD,
)

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gatehouse recitation",
        description="Detect model outputs that recite a protected corpus (MinHash candidates, aligned scores).",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="{build,check,info}")

    b = sub.add_parser("build", help="index a directory of UTF-8 .txt files")
    b.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    b.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="INDEX",
        help="index directory to write (replaced atomically if it exists)",
    )
    b.add_argument("--window", type=int, default=100, help="words per corpus window (default 100)")
    b.add_argument(
        "--stride", type=int, default=50, help="words between window starts (default 50)"
    )
    b.add_argument(
        "--shingle", type=int, default=DEFAULT_SHINGLE,
        help=f"tokens per shingle, for LSH candidates (default {DEFAULT_SHINGLE})",
    )
    b.add_argument(
        "--min-run", type=int, default=DEFAULT_MIN_RUN,
        help=f"shortest verbatim run that counts in the aligned score (default {DEFAULT_MIN_RUN})",
    )
    b.add_argument(
        "--cjk", choices=("morpheme", "char"), default="morpheme",
        help="unit for Japanese/Chinese text: MeCab morphemes (fugashi + unidic-lite) or characters",
    )
    b.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    b.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"share of the text's tokens copied in order needed to report a match (default {DEFAULT_THRESHOLD})",
    )
    b.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help=f"file name pattern to index (repeatable; default {' '.join(DEFAULT_INCLUDE)})",
    )
    b.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help=f"file name pattern to skip (repeatable; default {' '.join(DEFAULT_EXCLUDE)})",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = sub.add_parser("check", help="check a text against an index; prints the verdict JSON")
    c.add_argument("index", type=Path, metavar="INDEX")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to check")
    src.add_argument("--file", type=Path, help="read the text from this file ('-' for stdin)")

    i = sub.add_parser("info", help="print an index's manifest")
    i.add_argument("index", type=Path, metavar="INDEX")
    return ap


def _build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    index = RecitationIndex.build(
        args.corpus_dir,
        window_words=args.window,
        stride_words=args.stride,
        shingle_words=args.shingle,
        num_perm=args.num_perm,
        threshold=args.threshold,
        min_run=args.min_run,
        cjk=args.cjk,
        progress=not args.no_progress,
        include=tuple(args.include or DEFAULT_INCLUDE),
        exclude=tuple(args.exclude or DEFAULT_EXCLUDE),
    )
    index.save(args.output)
    m = index.manifest
    print(
        f"built {m['index_id']}: {len(m['sources'])} sources, {m['words']} words, "
        f"{m['windows']} windows -> {args.output} ({time.perf_counter() - t0:.1f}s)"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    if args.text is not None:
        text = args.text
    elif str(args.file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecitationError(f"cannot read {args.file}: {exc}") from exc
    index = RecitationIndex.load(args.index)
    match = index.check(text)
    verdict = {
        "recitation": match is not None,
        "index_id": index.manifest["index_id"],
        "threshold": index.threshold,
        "match": match.to_dict() if match else None,
    }
    print(json.dumps(verdict, indent=2, ensure_ascii=False))
    return 0


def _info(args: argparse.Namespace) -> int:
    # Manifest only, no verification: an index this process cannot load (other
    # datasketch major, corrupted arrays) can still be inspected to see why.
    print(json.dumps(read_manifest(args.index), indent=2, sort_keys=True))
    return 0


def main(argv: list[str]) -> int:
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "check":
            return _check(args)
        return _info(args)
    except (RecitationError, OSError) as exc:
        print(f"gatehouse recitation {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``gatehouse logs tail``: print traffic records from the JSONL file or the Redis stream."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from gatehouse_core.trafficlog import follow_jsonl, read_jsonl
from gateway.config import ConfigError
from gateway.cost import format_cost
from gateway.trafficlog import stream_key

FIELDS = ("request_id", "model", "target", "variant", "status", "latency_ms", "total_tokens", "cost", "error_kind")


def fmt(rec: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return orjson.dumps(rec).decode()
    parts = []
    for f in FIELDS:
        v = rec.get(f)
        if f == "cost":
            # "~": estimated by our tokenizer (the upstream reported no usage)
            v = None if v is None else ("~" if rec.get("cost_estimated") else "") + format_cost(v)
        elif isinstance(v, float):
            v = f"{v:.1f}"
        parts.append(f"{f}={v}")
    return " ".join(parts)


async def tail_redis(url: str, key: str, n: int, follow: bool, as_json: bool) -> None:
    import redis.asyncio as aioredis

    r = aioredis.from_url(url)
    try:
        entries: Any = await r.xrevrange(key, count=n)  # redis' stubs type replies as str | bytes
        last = "$"
        for entry_id, fields in reversed(entries):
            print(fmt(orjson.loads(fields[b"record"]), as_json), flush=True)
            last = entry_id.decode()
        while follow:
            got: Any = await r.xread({key: last}, block=1000, count=100)
            for _, items in got:
                for entry_id, fields in items:
                    print(fmt(orjson.loads(fields[b"record"]), as_json), flush=True)
                    last = entry_id.decode()
    finally:
        await r.aclose()


async def tail_file(path: Path, n: int, follow: bool, as_json: bool) -> None:
    for rec in deque(read_jsonl(path), maxlen=n):
        print(fmt(rec, as_json), flush=True)
    if follow:
        async for rec in follow_jsonl(path):
            print(fmt(rec, as_json), flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gatehouse logs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tail", help="print the last traffic records")
    t.add_argument("--config", help="gateway config (its traffic_log and redis sections pick the sink)")
    t.add_argument("--file", help="a JSONL traffic log (overrides --config)")
    t.add_argument("--redis", help="redis URL (overrides --config)")
    t.add_argument("--stream", default=None, help="stream key (default from config)")
    t.add_argument("-n", type=int, default=10)
    t.add_argument("-f", "--follow", action="store_true")
    t.add_argument("--json", action="store_true", help="print whole records as JSON")
    args = ap.parse_args(argv)
    from gateway.cli.serve import resolve_config

    try:
        settings, _ = resolve_config(args.config, demo=False)
    except ConfigError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 2
    use_redis = args.redis or (not args.file and settings.traffic_log.sink == "redis")
    with contextlib.suppress(KeyboardInterrupt):
        if use_redis:
            url = args.redis or settings.redis.url
            if not url:
                print("gatehouse: no Redis URL (use --redis or a config with redis.url)", file=sys.stderr)
                return 2
            asyncio.run(tail_redis(url, args.stream or stream_key(settings), args.n, args.follow, args.json))
        else:
            path = Path(args.file) if args.file else settings.resolve_path(settings.traffic_log.path)
            if not path.exists() and not args.follow:
                print(f"gatehouse: no traffic log at {path}", file=sys.stderr)
                return 1
            asyncio.run(tail_file(path, args.n, args.follow, args.json))
    return 0

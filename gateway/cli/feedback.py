"""`gatehouse feedback`: send feedback on a request to a running gateway, or export stored feedback.

    gatehouse feedback add REQUEST_ID --up --comment "great" --url http://127.0.0.1:8080 [--api-key KEY]
    gatehouse feedback add REQUEST_ID --correction "the right answer"
    gatehouse feedback add REQUEST_ID --preferred-over OTHER_REQUEST_ID
    gatehouse feedback export --store .gatehouse/registry --out feedback.jsonl

The gateway is --url, else $GATEHOUSE_URL; there is no built-in default (feedback sent to
whatever happens to listen on a default port would be lost without a word). The key is
--api-key, else $GATEHOUSE_API_KEY, else $OPENAI_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gatehouse feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="send feedback on a logged request (POST /v1/feedback)")
    a.add_argument("request_id")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--up", action="store_const", const="up", dest="rating")
    g.add_argument("--down", action="store_const", const="down", dest="rating")
    a.add_argument("--score", type=float)
    a.add_argument("--comment")
    a.add_argument("--correction")
    a.add_argument("--preferred-over", metavar="REQUEST_ID")
    a.add_argument("--user")
    a.add_argument("--url", help="gateway base URL, e.g. http://127.0.0.1:8080 (default: $GATEHOUSE_URL; required)")
    a.add_argument("--api-key", help="API key (default: $GATEHOUSE_API_KEY, then $OPENAI_API_KEY)")
    e = sub.add_parser("export")
    e.add_argument("--store", required=True, help="registry directory or feedback.db")
    e.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "export":
        from gatehouse_core.feedback import FeedbackStore

        store = FeedbackStore(args.store)
        n = 0
        with open(args.out, "w", encoding="utf-8") as f:
            for fb, rec, other in store.iter():
                f.write(json.dumps({**fb.to_dict(), "record": rec, "other_record": other}, ensure_ascii=False) + "\n")
                n += 1
        store.close()
        print(f"exported {n} feedback item(s) to {args.out}")
        return 0
    import httpx

    body = {k: v for k, v in {
        "request_id": args.request_id, "rating": args.rating, "score": args.score, "comment": args.comment,
        "correction": args.correction, "preferred_over": args.preferred_over, "user": args.user,
    }.items() if v is not None}
    url = args.url or os.environ.get("GATEHOUSE_URL")
    if not url:
        print("error: no gateway URL: pass --url http://HOST:PORT or set GATEHOUSE_URL", file=sys.stderr)
        return 2
    key = args.api_key or os.environ.get("GATEHOUSE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    args.url = url
    print(f"feedback -> {url.rstrip('/')}/v1/feedback", file=sys.stderr)
    try:
        r = httpx.post(url.rstrip("/") + "/v1/feedback", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 300:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text
        print(f"error: HTTP {r.status_code}: {msg}", file=sys.stderr)
        return 1
    print(r.json().get("id", r.text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

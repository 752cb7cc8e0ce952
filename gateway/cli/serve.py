"""``gatehouse serve``: run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import DEMO_CONFIG, ConfigError, Settings, load_settings
from gateway.errors import ErrorKind, GatewayError


def _demo_index_is_current(index_dir: Path, corpus: Path) -> bool:
    """True when the demo index exists, loads, and covers exactly the demo corpus files."""
    import hashlib

    from evaluators.recitation import RecitationError, RecitationIndex

    try:
        manifest = RecitationIndex.load(index_dir).manifest
    except RecitationError:  # missing, older format, other tokenizer: rebuild
        return False
    have = {s["name"]: s["sha256"] for s in manifest["sources"]}
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in corpus.glob("*.txt")}
    return have == want


def demo_env() -> None:
    """Defaults the demo config refers to: its policy file, and a recitation index of the
    demo corpus (Alice, chapter I, and a Japanese essay), built under .gatehouse/ on first
    start (about a second) and rebuilt when the corpus or the index format changes."""
    policies = Path(__file__).resolve().parents[2] / "policies" / "examples" / "demo.yaml"
    os.environ.setdefault("GATEHOUSE_DEMO_POLICIES", str(policies))
    if "GATEHOUSE_DEMO_RECITATION" not in os.environ:
        index_dir = Path(".gatehouse") / "demo-recitation"
        corpus = Path(__file__).resolve().parents[1] / "demo_corpus"
        if not _demo_index_is_current(index_dir, corpus):
            from evaluators.recitation import RecitationIndex

            RecitationIndex.build(corpus, progress=False).save(index_dir)
        os.environ["GATEHOUSE_DEMO_RECITATION"] = str(index_dir.resolve())


def resolve_config(path: str | None, demo: bool) -> tuple[Settings, Path | None]:
    if demo or (path is None and not os.environ.get("GATEHOUSE_CONFIG")):
        demo_env()
        s = load_settings(DEMO_CONFIG)
        # demo paths (logs, stores) are relative to where you run it, not to the package
        return s.model_copy(update={"base_dir": os.getcwd()}), None
    p = Path(path or os.environ["GATEHOUSE_CONFIG"])
    return load_settings(p), p


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on request header bytes.

    uvicorn bounds headers only under h11 (``h11_max_incomplete_event_size``); httptools
    buffers a header of any size. This counts the bytes that arrive while a request's
    headers are incomplete and answers 431 in the error shape once they pass the cap
    (``limits.max_header_bytes``, handed to workers in ``GATEHOUSE_MAX_HEADER_BYTES``).
    """

    def connection_made(self, transport: Any) -> None:
        self._max_head = int(os.environ.get("GATEHOUSE_MAX_HEADER_BYTES", "16384"))
        self._head_bytes = 0
        self._in_head = True
        super().connection_made(transport)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_head and not self.transport.is_closing():
            err = GatewayError(ErrorKind.HEADERS_TOO_LARGE, f"Request headers are larger than {self._max_head} bytes (limits.max_header_bytes).")
            body = err.json_bytes()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            self.transport.close()


def app_factory():
    from gateway.app import create_app

    settings, path = resolve_config(os.environ.get("GATEHOUSE_CONFIG") or None, os.environ.get("GATEHOUSE_DEMO") == "1")
    return create_app(settings, config_path=path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gatehouse serve", description="Run the Gatehouse gateway.")
    ap.add_argument("--config", help="config YAML (default: $GATEHOUSE_CONFIG, else the embedded demo)")
    ap.add_argument("--demo", action="store_true", help="run the embedded demo config")
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings, path = resolve_config(args.config, args.demo)
    except ConfigError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    if path is not None:
        os.environ["GATEHOUSE_CONFIG"] = str(path.resolve())
    else:
        os.environ["GATEHOUSE_DEMO"] = "1"
        os.environ.pop("GATEHOUSE_CONFIG", None)
        models = ", ".join(r.name for r in settings.routes)
        print(f"Gatehouse demo: OpenAI base_url http://{host}:{port}/v1, api_key sk-gatehouse-demo, models: {models}", flush=True)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        d = Path(tempfile.mkdtemp(prefix="gatehouse-prom-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        d = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    import uvicorn

    os.environ["GATEHOUSE_MAX_HEADER_BYTES"] = str(settings.limits.max_header_bytes)  # read by workers too

    uvicorn.run(
        "gateway.cli.serve:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        h11_max_incomplete_event_size=settings.limits.max_header_bytes,
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.server.shutdown_timeout) or None,
    )
    return 0

"""The traffic log: one record per request, written off the request path.

``TrafficLog.emit`` is a non-blocking put on a bounded queue; a writer task
drains it in batches to the configured sink. A full queue drops the record and
counts it in ``gatehouse_log_records_dropped_total`` (never silently); a sink
failure keeps the batch and retries it; shutdown drains the queue.

Sinks: ``JsonlSink`` (embedded default, size-based rotation, one JSON object a
line, written by one writer so lines never interleave) and ``RedisStreamSink``
(``XADD`` with approximate ``MAXLEN``, readable by consumer groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import orjson

from gatehouse_core.trafficlog import read_jsonl
from gateway.config import Settings, TrafficLogSettings
from gateway.metrics import Metrics
from gateway.types import TrafficRecord

log = logging.getLogger("gatehouse.trafficlog")


def encode(record: TrafficRecord) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


_CUT = 1024  # characters kept of a long string field when a record is over its limit


def bounded(record: TrafficRecord, limit: int) -> tuple[bytes, bool]:
    """``record`` as one JSON line of at most ``limit`` bytes, and whether it was cut.

    Bodies go first (replaced by ``{"truncated": true, "bytes": N}``), then long strings
    and ``extra``, then verdict details; the line says how large it was (``truncated_from``)."""
    line = encode(record)
    if len(line) <= limit:
        return line, False
    r = copy.copy(record)
    for name in ("request_body", "response_body"):
        value = getattr(r, name)
        if value is not None:
            setattr(r, name, {"truncated": True, "bytes": len(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))})
    for name in ("error_message", "model", "user", "target", "variant"):
        value = getattr(r, name)
        if isinstance(value, str) and len(value) > _CUT:
            setattr(r, name, value[:_CUT] + "…")
    r.extra = {"truncated_from": len(line)}
    out = encode(r)
    if len(out) > limit:
        r.verdicts = [copy.copy(v) for v in r.verdicts]
        for v in r.verdicts:
            v.detail = None
        r.grounding_chunk_ids = None
        out = encode(r)
    if len(out) > limit:  # the ids and numbers always fit
        r.verdicts = []
        out = encode(r)
    return out, True


class Sink(Protocol):
    name: str

    async def write(self, lines: list[bytes]) -> None: ...

    async def aclose(self) -> None: ...


class JsonlSink:
    """Append JSON lines to a file; rotate to ``.1`` .. ``.N`` past ``max_bytes``.

    Several workers may share the file: each batch is one ``write`` on an
    ``O_APPEND`` descriptor under an exclusive ``flock``, and a worker that finds
    the path rotated by another reopens it, so lines never interleave or vanish.
    """

    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _write_sync(self, lines: list[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or current.st_ino != os.fstat(self._fd).st_ino:
                os.close(self._fd)  # another worker rotated the file
                self._fd = self._open()
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                current = os.fstat(self._fd)
            if current.st_size and current.st_size + len(data) > self.max_bytes:
                self._rotate()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        old = self._fd
        self._fd = self._open()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        fcntl.flock(old, fcntl.LOCK_UN)
        os.close(old)

    async def write(self, lines: list[bytes]) -> None:
        # small appends to a local file: cheaper inline than a thread hop
        self._write_sync(lines)

    async def find(self, request_id: str) -> dict[str, Any] | None:
        needle = f'"request_id":"{request_id}"'.encode()

        def scan() -> dict[str, Any] | None:
            for rec in read_jsonl(self.path, needle=needle):
                if rec.get("request_id") == request_id:
                    return rec
            return None

        return await asyncio.get_running_loop().run_in_executor(None, scan)

    async def aclose(self) -> None:
        os.close(self._fd)


class RedisStreamSink:
    name = "redis"

    def __init__(self, redis: Any, stream: str, maxlen: int) -> None:
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen

    async def write(self, lines: list[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self.stream, {"record": line}, maxlen=self.maxlen, approximate=True)
        await pipe.execute()

    async def find(self, request_id: str, max_scan: int = 200_000) -> dict[str, Any] | None:
        """Newest first, so feedback on a recent request from another replica is found fast."""
        needle = f'"request_id":"{request_id}"'.encode()
        end, scanned = "+", 0
        while scanned < max_scan:
            entries = await self.redis.xrevrange(self.stream, max=end, count=1000)
            for _, fields in entries:
                raw = fields.get(b"record", b"")
                if needle in raw:
                    return orjson.loads(raw)  # type: ignore[no-any-return]
            if len(entries) < 1000:
                return None
            scanned += len(entries)
            end = "(" + entries[-1][0].decode()
        return None

    async def aclose(self) -> None:
        return None


class NullSink:
    name = "none"

    async def write(self, lines: list[bytes]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class TrafficLog:
    RECENT = 10_000  # records kept in memory for look-ups by request id (feedback)

    def __init__(self, sink: Sink, metrics: Metrics, queue_size: int, batch_size: int, log_bodies: bool,
                 max_record_bytes: int = 256 * 1024) -> None:
        self.sink = sink
        self.max_record_bytes = max_record_bytes
        self._truncated = metrics.counter(
            "traffic_records_truncated_total", "Traffic records cut to traffic_log.max_record_bytes (bodies and long fields)", ())
        self._recent: OrderedDict[str, TrafficRecord] = OrderedDict()
        self.metrics = metrics
        self.log_bodies = log_bodies
        self.batch_size = batch_size
        self._queue: asyncio.Queue[TrafficRecord] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="traffic-log")

    def emit(self, record: TrafficRecord) -> None:
        if not self.log_bodies:
            record.request_body = None
            record.response_body = None
            record.extra.pop("prompt_variables", None)  # user data, like the bodies
        recent = self._recent
        recent[record.request_id] = record
        if len(recent) > self.RECENT:
            recent.popitem(last=False)
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            self.metrics.log_dropped.inc()

    def recent(self) -> list[TrafficRecord]:
        """Records this process emitted lately, oldest first (the sink may not have them yet)."""
        return list(self._recent.values())

    async def lookup(self, request_id: str) -> dict[str, Any] | None:
        """The record of a request: from memory if recent, else from the sink."""
        rec = self._recent.get(request_id)
        if rec is not None:
            return orjson.loads(encode(rec))  # type: ignore[no-any-return]
        finder = getattr(self.sink, "find", None)
        return await finder(request_id) if finder is not None else None

    async def _run(self) -> None:
        q = self._queue
        while True:
            batch = [await q.get()]
            while len(batch) < self.batch_size and not q.empty():
                batch.append(q.get_nowait())
            await self._write(batch)

    def _encode_batch(self, batch: list[TrafficRecord]) -> list[bytes]:
        lines = []
        for r in batch:
            line, cut = bounded(r, self.max_record_bytes)
            if cut:
                self._truncated.inc()
            lines.append(line)
        return lines

    async def _write(self, batch: list[TrafficRecord]) -> None:
        if any(r.request_body is not None or r.response_body is not None for r in batch):
            # with log_bodies on a batch can hold megabytes: serialise it in a worker thread
            lines = await asyncio.to_thread(self._encode_batch, batch)
        else:
            lines = self._encode_batch(batch)  # without bodies a record is small and bounded
        delay = 0.05
        while True:
            try:
                await self.sink.write(lines)
                self.written += len(lines)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the batch and retry: a record is never lost quietly
                self.metrics.log_errors.labels(self.sink.name).inc()
                log.warning("traffic log sink %s failed (%s); retrying %d records", self.sink.name, exc, len(lines))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop the writer and flush whatever is queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending: list[TrafficRecord] = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        if pending:
            try:
                await asyncio.wait_for(self._write(pending), timeout)
            except TimeoutError:
                self.dropped += len(pending)
                self.metrics.log_dropped.inc(len(pending))
                log.error("traffic log: %d records could not be flushed at shutdown", len(pending))
        await self.sink.aclose()


def build_sink(cfg: TrafficLogSettings, settings: Settings, redis: Any) -> Sink:
    if cfg.sink == "jsonl":
        return JsonlSink(settings.resolve_path(cfg.path), cfg.max_bytes, cfg.backups)
    if cfg.sink == "redis":
        if redis is None:
            raise ValueError("traffic_log.sink is `redis` but redis.url is not set")
        return RedisStreamSink(redis, stream_key(settings), cfg.maxlen)
    return NullSink()


def stream_key(settings: Settings) -> str:
    s = settings.traffic_log.stream
    p = settings.redis.key_prefix
    return s if s.startswith(p) else p + s

"""Reading traffic logs back: the JSONL files the gateway's ``JsonlSink`` writes.

Used by ``gatehouse logs``, the eval monitor, eval datasets and tuning's dataset builds;
it imports nothing of the serving path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson

# ---- reading back (``gatehouse logs tail``) --------------------------------------------

def log_files(path: Path) -> list[Path]:
    """A JSONL log's rotated backups (``.N`` .. ``.1``) and the log itself, oldest first."""
    backups = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    return [*sorted(backups, key=lambda p: -int(p.suffix[1:])), path]


def read_log_file(f: Path, needle: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Records of one log file (a torn last line or a line that is not a JSON object is
    skipped). With ``needle``, only lines containing it are parsed."""
    if not f.exists():
        return
    with open(f, "rb") as fh:
        for line in fh:
            if needle is not None and needle not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(line)
                if isinstance(rec, dict):
                    yield rec


def read_jsonl(path: Path, needle: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Records of a JSONL log and its rotated backups, oldest first."""
    for f in log_files(path):
        yield from read_log_file(f, needle)


async def follow_jsonl(path: str | os.PathLike[str], *, from_start: bool = False, poll: float = 0.25, stop: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
    """Yield records appended to a JSONL traffic log; reopens the file after rotation."""
    p = Path(path)
    f = None
    inode = None
    buf = b""
    try:
        while not (stop and stop.is_set()):
            if f is None:
                if not p.exists():
                    await _wait(poll, stop)
                    continue
                f = p.open("rb")
                inode = os.fstat(f.fileno()).st_ino
                if not from_start:
                    f.seek(0, os.SEEK_END)
                from_start = True  # later (rotated) files are read from the start
            chunk = f.read(1 << 16)
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        obj = orjson.loads(line)
                        if isinstance(obj, dict):
                            yield obj
                continue
            try:
                st = p.stat()
                rotated = st.st_ino != inode or st.st_size < f.tell()
            except FileNotFoundError:
                rotated = True
            if rotated:
                f.close()
                f, buf = None, b""
                continue
            await _wait(poll, stop)
    finally:
        if f is not None:
            f.close()


async def _wait(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)



"""One reload mechanism for the gateway config: file watching, SIGHUP and ``POST /admin/reload``.

All three triggers go through ``ConfigReloader.reload``: one lock, so two
reloads never interleave, and one file stamp. The stamp (inode, mtime in ns,
size) is taken *before* the file is read: a write that lands while a slow
reload is loading a model leaves the stamp stale, so the next poll reloads
again. (The old watcher read the mtime after the reload finished, so a canary
deploy followed quickly by a promote could be swallowed, and an error other
than ``OSError`` ended the watch task without a word.) ``os.replace`` of a
rewritten config changes the inode, so even a same-tick rewrite is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("gatehouse.reload")

Stamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ConfigReloader:
    def __init__(self, path: Path, apply: Callable[[str], Awaitable[dict[str, Any]]], *, poll_seconds: float = 1.0) -> None:
        self.path = path
        self._apply = apply
        self.poll_seconds = poll_seconds
        self._stamp: Stamp = file_stamp(path)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloads = 0

    async def reload(self, reason: str) -> dict[str, Any]:
        async with self._lock:
            stamp = file_stamp(self.path)
            try:
                result = await self._apply(reason)
            except Exception as exc:  # keep serving the old routes, and keep watching
                log.exception("config reload (%s) failed, keeping the running routes", reason)
                result = {"reloaded": False, "reason": f"{type(exc).__name__}: {exc}"}
            # a failed reload still records the stamp: the same broken file is not retried every second
            self._stamp = stamp
            self.reloads += 1
            return {"trigger": reason, **result}

    def request(self, reason: str) -> None:
        """Schedule a reload (from a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def changed(self) -> bool:
        return file_stamp(self.path) != self._stamp

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                if self.changed():
                    await self.reload("file changed")
            except Exception:  # never let the watcher die silently
                log.exception("config watch failed")

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

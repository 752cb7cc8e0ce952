"""Hot reload of policy files: polling, SIGHUP and a Redis announcement.

A ``PolicyWatcher`` owns the live ``PolicySet``. It polls the files' mtimes
and sizes every ``poll_seconds`` and reloads when they change; SIGHUP (the app
installs the handler with ``install_sighup``) forces a reload. A reload that
fails keeps the last good policy live, logs every problem and reports
``error`` to ``on_result``. With Redis, a successful change is announced on a
pub/sub channel so every replica reloads its own files and converges on the
same version without waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from policies.loader import PolicyLoadError, policy_files
from policies.policy_set import PolicySet

log = logging.getLogger("gatehouse.policies")

DEFAULT_CHANNEL = "gatehouse:policies:reload"


class PolicyWatcher:
    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        current: PolicySet | None = None,
        on_change: Callable[[PolicySet], Awaitable[None] | None] | None = None,
        on_result: Callable[[str], None] | None = None,
        poll_seconds: float = 1.0,
        redis: Any = None,
        channel: str = DEFAULT_CHANNEL,
        replica_id: str | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.policies = current if current is not None else PolicySet.load(self.paths)
        self.on_change = on_change
        self.on_result = on_result
        self.poll_seconds = poll_seconds
        self.redis = redis
        self.channel = channel
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.last_error: PolicyLoadError | None = None
        self._stamp = self._file_stamp()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, poll: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        if poll:
            self._tasks.append(asyncio.create_task(self._poll(), name="policy-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="policy-subscribe"))

    async def wait_subscribed(self) -> None:
        """Until the pub/sub subscription is live (wrap in ``asyncio.timeout``)."""
        await self._subscribed.wait()

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Reload on SIGHUP; False where signals can't be handled (Windows, non-main thread)."""
        loop = loop or self._loop or asyncio.get_running_loop()
        self._loop = loop
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload, "sighup")
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            return False
        return True

    def request_reload(self, reason: str = "sighup") -> None:
        """Schedule a reload from a signal handler or another thread."""
        loop = self._loop
        if loop is None:
            return
        def spawn() -> None:
            task = loop.create_task(self._reload_quietly(reason))
            self._tasks.append(task)
            task.add_done_callback(self._forget)

        loop.call_soon_threadsafe(spawn)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    # -- reloading ---------------------------------------------------------

    async def reload(self, reason: str = "manual", *, announce: bool = True) -> str:
        """Load the files again; returns ``success``, ``unchanged`` or ``error``."""
        async with self._lock:
            self._stamp = self._file_stamp()
            try:
                new = await asyncio.to_thread(PolicySet.load, self.paths)
            except PolicyLoadError as exc:
                self.last_error = exc
                log.error(
                    "policy reload (%s) failed; keeping version %s live:\n%s",
                    reason, self.policies.version, "\n".join(f"  {p}" for p in exc.problems),
                )
                self._report("error")
                return "error"
            except Exception:
                log.exception("policy reload (%s) failed; keeping version %s live", reason, self.policies.version)
                self._report("error")
                return "error"
            self.last_error = None
            if new.version == self.policies.version:
                self._report("unchanged")
                return "unchanged"
            old = self.policies.version
            if self.on_change is not None:
                try:
                    res = self.on_change(new)
                    if inspect.isawaitable(res):
                        await res
                except Exception:  # e.g. a model the new policy needs failed to load
                    log.exception("policy reload (%s): applying %s failed; keeping %s live", reason, new.version, old)
                    self._report("error")
                    return "error"
            self.policies = new
            log.info("policies reloaded (%s): %s -> %s", reason, old, new.version)
            self._report("success")
        if announce and self.redis is not None:
            await self._announce(new.version, reason)
        return "success"

    async def _reload_quietly(self, reason: str) -> None:
        try:
            await self.reload(reason)
        except Exception:  # never let a background reload kill its task silently
            log.exception("policy reload (%s) crashed", reason)

    def _report(self, result: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("policy reload result callback failed")

    def _file_stamp(self) -> str:
        files, problems = policy_files(self.paths)
        h = hashlib.sha256()
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
        h.update(str(len(problems)).encode())
        return h.hexdigest()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                if self._file_stamp() != self._stamp:
                    await self.reload("files changed")
            except Exception:
                log.exception("policy poll failed")

    # -- replicas ----------------------------------------------------------

    async def _announce(self, version: str, reason: str) -> None:
        msg = json.dumps({"origin": self.replica_id, "version": version, "reason": reason, "pid": os.getpid()})
        try:
            await self.redis.publish(self.channel, msg)
        except Exception as exc:  # replicas still converge through their own polling
            log.warning("could not announce policy reload on %s: %s", self.channel, exc)

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                async for msg in pubsub.listen():
                    if msg.get("type") != "message":
                        continue
                    try:
                        data = json.loads(msg["data"])
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(data, dict) or data.get("origin") == self.replica_id:
                        continue
                    await self.reload(f"announced by {data.get('origin')}", announce=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                log.warning("policy reload subscription lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

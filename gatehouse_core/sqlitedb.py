"""SQLite connections for the stores several processes share (keys, prompts, registry, feedback).

Every store runs in WAL mode so a CLI can write while gateways read. Switching a
fresh database to WAL needs an exclusive lock, and SQLite may refuse it at once
("database is locked") instead of waiting through the busy timeout when two
processes open the same new file together, as the workers of ``serve --workers
N`` do at startup. ``connect`` retries that one statement until the timeout.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def connect(path: str | Path, *, timeout: float = 30.0, **kwargs: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, **kwargs)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class LazyConnection:
    """One connection opened on first use, so a process that never touches the store creates
    no file: the parent folder is made, the database opened with ``connect`` (WAL) and its
    ``schema`` script run. ``lock`` serialises statements on the connection (it is shared by
    the threads ``asyncio.to_thread`` runs them in); ``query`` takes it for one statement."""

    def __init__(self, path: str | Path, schema: str, *, timeout: float = 10.0, **kwargs: Any) -> None:
        self.path = Path(path)
        self.schema = schema
        self.lock = threading.Lock()
        self._open_lock = threading.Lock()  # apart from ``lock``, which callers may hold here
        self._kwargs = {"timeout": timeout, **kwargs}
        self._conn: sqlite3.Connection | None = None

    @property
    def opened(self) -> bool:
        return self._conn is not None

    def get(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            with self._open_lock:
                if self._conn is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fresh = connect(self.path, **self._kwargs)
                    fresh.executescript(self.schema)
                    fresh.commit()
                    self._conn = fresh
                conn = self._conn
        return conn

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.get().execute(sql, args).fetchall()

    def close(self) -> None:
        with self.lock, self._open_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

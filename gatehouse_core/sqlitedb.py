"""SQLite connections for the stores several processes share (keys, prompts, registry, feedback).

Every store runs in WAL mode so a CLI can write while gateways read. Switching a
fresh database to WAL needs an exclusive lock, and SQLite may refuse it at once
("database is locked") instead of waiting through the busy timeout when two
processes open the same new file together, as the workers of ``serve --workers
N`` do at startup. ``connect`` retries that one statement until the timeout.
"""

from __future__ import annotations

import sqlite3
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

"""Shared SQLite stores open in WAL mode even while another process holds the file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from gatehouse_core import sqlitedb


def test_connect_waits_out_a_lock_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # as a second worker creating the same file would
    threading.Timer(0.2, holder.commit).start()
    conn = sqlitedb.connect(path, timeout=5.0)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
        holder.close()

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


def test_lazy_connection_opens_once_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lazy.db"
    db = sqlitedb.LazyConnection(path, "CREATE TABLE IF NOT EXISTS t (x INTEGER)", isolation_level=None)
    assert not db.opened and not path.exists()  # a store nobody uses writes no file
    barrier = threading.Barrier(8)
    conns: list[sqlite3.Connection] = []

    def first_use() -> None:
        barrier.wait()
        conns.append(db.get())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 1 and db.opened and path.exists()
    db.query("INSERT INTO t VALUES (?)", (1,))
    assert db.query("SELECT x FROM t") == [(1,)]
    assert db.query("PRAGMA journal_mode") == [("wal",)]
    db.close()
    assert not db.opened
    assert db.query("SELECT x FROM t") == [(1,)]  # reopened on the next use, schema kept
    db.close()
    db.close()  # idempotent

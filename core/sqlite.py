"""SQLite set-up shared by the loop's stores (job table, upload index, labeled store, outbox): several processes
of one machine open the same files."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_wal(path: Path, schema: str, timeout_s: float = 30.0) -> None:
    """Put the database in WAL mode and create its tables, safe when several processes start at once.

    Changing the journal mode needs an exclusive lock, and SQLite answers "database is locked" at once, without
    its busy wait, while another connection holds one. So the change is retried until `timeout_s`, and skipped
    when another process already made it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        db = sqlite3.connect(path, timeout=timeout_s)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.executescript(schema)
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
        finally:
            db.close()
        time.sleep(0.01)


@contextmanager
def transaction(path: Path, timeout_s: float = 30.0) -> Iterator[sqlite3.Connection]:
    """A fresh connection with durable commits (synchronous FULL), one transaction (committed on success, rolled
    back on error), closed afterwards."""
    db = sqlite3.connect(path, timeout=timeout_s)
    try:
        db.execute("PRAGMA synchronous = FULL")
        with db:
            yield db
    finally:
        db.close()

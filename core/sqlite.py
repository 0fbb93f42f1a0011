"""SQLite set-up shared by the job table and the upload index (several processes of one machine)."""

from __future__ import annotations

import sqlite3
import time
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

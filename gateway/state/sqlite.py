"""The gateway's own SQLite files (keys, policy history, decision records): one way to open them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL so readers never wait on the
    writer, usable from worker threads (callers serialise their own use), with `schema` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    # Replicas (or threads) opening one file together: switching to WAL can fail at once with "locked"
    # (SQLite does not wait there), and the schema goes in one immediate transaction, which does wait.
    for attempt in range(50):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.05)
    db.executescript(f"BEGIN IMMEDIATE;\n{schema}\n;\nCOMMIT;")
    return db

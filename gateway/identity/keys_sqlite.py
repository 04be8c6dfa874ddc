"""Virtual keys in SQLite in the state directory (one gateway, or replicas sharing a volume): the
`KeyDatabase` a `KeyStore` runs on when no PostgreSQL is configured."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.identity.keys import SCHEMA
from gateway.state.sqlite import open_database


class SqliteKeys:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    def execute(self, sql: str, params: Sequence[object]) -> int:
        with self._lock:
            return self._db.execute(sql.format(p="?"), list(params)).rowcount

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql.format(p="?"), list(params)).fetchall()

    def close(self) -> None:
        self._db.close()

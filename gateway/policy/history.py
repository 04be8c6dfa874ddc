"""Every policy version that went live, with who, when and the diff, in SQLite (WAL): nothing applied
is lost to a crash, a restart or a later bad edit, and any version can be brought back."""

from __future__ import annotations

import difflib
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.state.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    author TEXT NOT NULL,
    digest TEXT NOT NULL,
    source TEXT NOT NULL,
    diff TEXT NOT NULL,
    PRIMARY KEY (name, version)
)
"""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    name: str
    version: int
    applied_at: float
    author: str
    digest: str
    diff: str


class PolicyHistory:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._db.execute("PRAGMA synchronous=FULL")  # a version that went live must survive a crash
        self._lock = threading.Lock()  # one connection, used from worker threads: one caller at a time

    def record(self, name: str, source: str, author: str) -> int:
        """Store `source` as the next version of `name` (unless it equals the latest); its number."""
        digest = hashlib.sha256(source.encode()).hexdigest()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            latest = self._db.execute(
                "SELECT version, digest, source FROM policy_versions"
                " WHERE name = ? ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
            if latest is not None and latest[1] == digest:
                return int(latest[0])
            previous = latest[2] if latest is not None else ""
            version = (latest[0] if latest is not None else 0) + 1
            diff = "".join(
                difflib.unified_diff(
                    previous.splitlines(keepends=True),
                    source.splitlines(keepends=True),
                    f"{name} v{version - 1}",
                    f"{name} v{version}",
                )
            )
            self._db.execute(
                "INSERT INTO policy_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, time.time(), author, digest, source, diff),
            )
            return version

    def versions(self, name: str) -> list[PolicyVersion]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, applied_at, author, digest, diff FROM policy_versions"
                " WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
        return [PolicyVersion(*row) for row in rows]

    def source_of(self, name: str, version: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT source FROM policy_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        return str(row[0]) if row is not None else None

    def close(self) -> None:
        self._db.close()

"""Virtual API keys: each tied to a team and a role, stored only as a SHA-256 digest.

The plaintext is shown once, when a key is created or rotated. Rotating keeps the key's id (so its
history stays one line) and replaces its secret; revoking stops it at once.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.state.sqlite import open_database

Role = Literal["client", "admin", "finance"]
ROLES: tuple[Role, ...] = ("client", "admin", "finance")
KEY_PREFIX = "gw-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    team: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None = None

    def public(self) -> dict[str, object]:
        """What may be shown about a key: never its secret or digest."""
        return {
            "id": self.id,
            "team": self.team,
            "role": self.role,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class KeyNotFound(LookupError):
    pass


class KeyStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    def create(self, team: str, role: Role, name: str = "") -> tuple[ApiKey, str]:
        _check(team, role)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey("key_" + secrets.token_hex(6), team, role, name, time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (key.id, key.team, key.role, key.name, digest_of(secret), key.created_at),
            )
        return key, secret

    def rotate(self, key_id: str) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            updated = self._db.execute(
                "UPDATE api_keys SET digest = ? WHERE id = ? AND revoked_at IS NULL",
                (digest_of(secret), key_id),
            ).rowcount
        if not updated:
            raise KeyNotFound(f"no active key {key_id!r}")
        return self.get(key_id), secret

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            updated = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            ).rowcount
        if not updated:
            raise KeyNotFound(f"no active key {key_id!r}")
        return self.get(key_id)

    def get(self, key_id: str) -> ApiKey:
        with self._lock:
            row = self._db.execute(
                "SELECT id, team, role, name, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        if row is None:
            raise KeyNotFound(f"no key {key_id!r}")
        return ApiKey(*row)

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = "SELECT id, team, role, name, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at").fetchall()
        return [ApiKey(*row) for row in rows]

    def active_by_digest(self) -> dict[str, ApiKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT digest, id, team, role, name, created_at, revoked_at FROM api_keys"
                " WHERE revoked_at IS NULL"
            ).fetchall()
        return {row[0]: ApiKey(*row[1:]) for row in rows}

    def close(self) -> None:
        self._db.close()


def _check(team: str, role: str) -> None:
    if not team or not team.strip():
        raise ValueError("a key needs a team")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")

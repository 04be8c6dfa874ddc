"""Virtual API keys: each tied to a team and a role, stored only as a SHA-256 digest.

The plaintext is shown once, when a key is created or rotated. Rotating keeps the key's id (so its
history stays one line) and replaces its secret; revoking stops it at once.

This module is the key store's seam: the types, the errors, the statements (`KeyStore`) and the
`KeyDatabase` Protocol they run on. The databases are `keys_sqlite.SqliteKeys` and
`keys_postgres.PostgresKeys`; `key_backends.open_key_store` picks one. Keys live where the ledger does:
in PostgreSQL when `GATEWAY_DATABASE_URL` names one (so every replica knows a key made through any of
them), else in SQLite in the state directory.

Team and key names are checked here, for the API and the CLI alike: they end up in logs, headers, the
ledger and the dashboard, so a team is a short identifier and a name is one line of printable text.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Role = Literal["client", "admin", "finance"]
ROLES: tuple[Role, ...] = ("client", "admin", "finance")
KEY_PREFIX = "gw-"
TEAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_TEAM = re.compile(TEAM_PATTERN)
NAME_MAX_LENGTH = 100
KeyAction = Literal["create", "revoke", "rotate"]

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


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A key was made, revoked or rotated (what replicas tell each other; never a secret or digest)."""

    key_id: str
    action: KeyAction

    @property
    def stops_a_secret(self) -> bool:
        """Whether a secret that worked before must stop working now."""
        return self.action != "create"


class KeyNotFound(LookupError):
    pass


class InvalidKeyField(ValueError):
    """A team, name or role a key may not have; `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class KeysUnavailable(RuntimeError):
    """The key database cannot be reached now."""


class KeyDatabase(Protocol):
    """Where keys are kept. SQL is written with `{p}` for each parameter."""

    def execute(self, sql: str, params: Sequence[object]) -> int:
        """Run a change; the number of rows it changed."""
        ...

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class KeyStore:
    def __init__(self, database: KeyDatabase) -> None:
        self._db = database

    def create(self, team: str, role: Role, name: str = "") -> tuple[ApiKey, str]:
        check_new_key(team, role, name)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey("key_" + secrets.token_hex(6), team, role, name, time.time())
        self._db.execute(
            "INSERT INTO api_keys VALUES ({p}, {p}, {p}, {p}, {p}, {p}, NULL)",
            (key.id, key.team, key.role, key.name, digest_of(secret), key.created_at),
        )
        return key, secret

    def rotate(self, key_id: str) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        updated = self._db.execute(
            "UPDATE api_keys SET digest = {p} WHERE id = {p} AND revoked_at IS NULL",
            (digest_of(secret), key_id),
        )
        if not updated:
            raise KeyNotFound(f"no active key {key_id!r}")
        return self.get(key_id), secret

    def revoke(self, key_id: str) -> ApiKey:
        updated = self._db.execute(
            "UPDATE api_keys SET revoked_at = {p} WHERE id = {p} AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        if not updated:
            raise KeyNotFound(f"no active key {key_id!r}")
        return self.get(key_id)

    def get(self, key_id: str) -> ApiKey:
        rows = self._db.query(
            "SELECT id, team, role, name, created_at, revoked_at FROM api_keys WHERE id = {p}", (key_id,)
        )
        if not rows:
            raise KeyNotFound(f"no key {key_id!r}")
        return ApiKey(*rows[0])

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = "SELECT id, team, role, name, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        rows = self._db.query(query + " ORDER BY created_at")
        return [ApiKey(*row) for row in rows]

    def active_by_digest(self) -> dict[str, ApiKey]:
        rows = self._db.query(
            "SELECT digest, id, team, role, name, created_at, revoked_at FROM api_keys"
            " WHERE revoked_at IS NULL"
        )
        return {row[0]: ApiKey(*row[1:]) for row in rows}

    def import_keys(self, other: KeyStore) -> int:
        """Copy the keys `other` holds that this store lacks (by id); how many were copied."""
        rows = other._db.query("SELECT id, team, role, name, digest, created_at, revoked_at FROM api_keys")
        copied = 0
        for row in rows:
            copied += self._db.execute(
                "INSERT INTO api_keys VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (id) DO NOTHING",
                row,
            )
        return copied

    def close(self) -> None:
        self._db.close()


def check_new_key(team: str, role: str, name: str) -> None:
    """Raise InvalidKeyField unless a key may have this team, role and name."""
    if not _TEAM.fullmatch(team):
        raise InvalidKeyField(
            "team",
            f"Invalid team {_quoted(team)}: a team is 1 to 64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit.",
        )
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidKeyField("name", f"Invalid name: at most {NAME_MAX_LENGTH} characters, not {len(name)}.")
    unprintable = next((char for char in name if _unprintable(char)), None)
    if unprintable is not None:
        raise InvalidKeyField(
            "name",
            f"Invalid name {_quoted(name)}: control and formatting characters "
            f"(here U+{ord(unprintable):04X}) are not allowed.",
        )
    if role not in ROLES:
        raise InvalidKeyField("role", f"role must be one of {', '.join(ROLES)}, not {role!r}")


def _unprintable(char: str) -> bool:
    """Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned characters, and
    line or paragraph separators."""
    return unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _quoted(value: str) -> str:
    """A value for an error message: escaped (no raw control characters) and cut short."""
    return repr(value[:60] + "…" if len(value) > 60 else value)

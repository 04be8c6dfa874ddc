"""Who is asking: a bearer key resolved to its key id, team and role.

Keys come from the key store (re-read every few seconds, so a key made by the CLI or through another
replica takes effect without a restart) and, for bootstrapping, from GATEWAY_API_KEYS (clients of team
`default`) and GATEWAY_ADMIN_KEYS. Keys are found by the SHA-256 digest of what the client sent: the
secret itself is never compared or kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.accounting.keys import ApiKey, KeyStore, KeysUnavailable, Role, digest_of
from gateway.errors import AuthenticationFailed, PermissionDenied

REFRESH_SECONDS = 2.0
logger = logging.getLogger("gateway.accounting.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None
    team: str | None
    role: Role


# A gateway with no keys at all runs open, on loopback only, and everyone on it may do everything.
OPEN = Principal(None, None, "admin")


class Authenticator:
    def __init__(
        self,
        store: KeyStore | None,
        client_secrets: Iterable[str] = (),
        admin_secrets: Iterable[str] = (),
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._store = store
        bootstrap: list[tuple[Iterable[str], Role]] = [(client_secrets, "client"), (admin_secrets, "admin")]
        self._bootstrap = {
            digest_of(secret): ApiKey(f"env-{digest_of(secret)[:8]}", "default", role, "environment", 0.0)
            for secrets, role in bootstrap
            for secret in secrets
        }
        self._refresh_seconds = refresh_seconds
        self._keys: dict[str, ApiKey] = {}
        self._loaded_at = 0.0
        self._unavailable = False
        self.refresh()

    def refresh(self) -> None:
        """Re-read the stored keys; while their database is away, the keys last read stay in force."""
        self._loaded_at = time.monotonic()
        try:
            stored = self._store.active_by_digest() if self._store is not None else {}
        except KeysUnavailable as exc:
            if not self._unavailable:
                logger.warning(
                    "key store unavailable, keeping the %d keys last read: %s", len(self._keys), exc
                )
            self._unavailable = True
            if not self._keys:
                self._keys = dict(self._bootstrap)
            return
        if self._unavailable:
            logger.warning("key store is back")
        self._unavailable = False
        self._keys = {**stored, **self._bootstrap}

    @property
    def open(self) -> bool:
        return not self._keys

    def _current(self) -> dict[str, ApiKey]:
        """The active keys by digest, re-read when older than the refresh interval."""
        if time.monotonic() - self._loaded_at > self._refresh_seconds:
            self.refresh()
        return self._keys

    def principal(self, authorization: str | None) -> Principal:
        if not self._current():
            return OPEN
        if not authorization:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, secret = authorization.partition(" ")
        key = self._keys.get(digest_of(secret.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return Principal(key.id, key.team, key.role)

    def principal_of_key(self, key_id: str) -> Principal | None:
        """The principal of an active key, by its id (a dashboard session names its key so); None when
        the key is unknown or revoked. An open gateway (no keys at all) has no sessions."""
        for key in self._current().values():
            if key.id == key_id:
                return Principal(key.id, key.team, key.role)
        return None


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise PermissionDenied(
            f"This needs a key with role {' or '.join(roles)}; this key's role is {principal.role}."
        )

"""Who is asking: a bearer key resolved to its key id, team and role.

Keys come from the key store and, for bootstrapping, from GATEWAY_API_KEYS (clients of team `default`)
and GATEWAY_ADMIN_KEYS. Keys are found by the SHA-256 digest of what the client sent: the secret itself
is never compared or kept.

Nothing on the request path touches the key database: `principal()` reads a dict in memory. The dict is
read once at start-up, then re-read in the background (`run`, every REFRESH_SECONDS, on a worker thread),
so a key made by the CLI or through another replica takes effect without a restart. A change this
replica hears of (its own admin API, or another replica through Redis: `key_changes.py`) drops the key
at once (`forget_key`) and asks for a re-read. One read at a time: while one is in flight (a hung
database) the next ticks are skipped, not piled up; a read that fails or takes longer than READ_TIMEOUT
keeps the keys last read, logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.identity.keys import ApiKey, KeyStore, KeysUnavailable, Role, digest_of

REFRESH_SECONDS = 2.0
# A read not done by then counts as failed (the store's own timeouts normally end it sooner).
READ_TIMEOUT = 3.0
# The keys are stale, and the store unhealthy, when the last good read is older than this.
STALE_AFTER_SECONDS = 10.0
logger = logging.getLogger("gateway.identity.auth")


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
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._store = store
        bootstrap: list[tuple[Iterable[str], Role]] = [(client_secrets, "client"), (admin_secrets, "admin")]
        self._bootstrap = {
            digest_of(secret): ApiKey(f"env-{digest_of(secret)[:8]}", "default", role, "environment", 0.0)
            for secrets, role in bootstrap
            for secret in secrets
        }
        self._refresh_seconds = refresh_seconds
        self._read_timeout = read_timeout
        self._keys: dict[str, ApiKey] = {}
        self._refreshed_at: float | None = None
        self._error: str | None = None
        # Re-reads asked for and done (tickets), and how many keys were forgotten (a read that started
        # before a key was forgotten may still hold it: its result is not used).
        self._asked = 0
        self._done = 0
        self._forgotten = 0
        self._waiting: list[tuple[int, asyncio.Future[bool]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.refresh()

    # Reading the keys

    def refresh(self) -> None:
        """Read the stored keys now, on this thread (start-up; the event loop uses `reload`)."""
        try:
            self._use(self._read())
        except KeysUnavailable as exc:
            self._failed(exc)

    async def reload(self) -> bool:
        """Re-read the keys off the event loop; returns once a read that started after this call has ended
        (or timed out): True when the keys were read, False when the last ones stay in force."""
        ticket = self.reload_soon()
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((ticket, answered))
        return await answered

    def reload_soon(self) -> int:
        """Ask for a re-read without waiting for it; its ticket."""
        self._asked += 1
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_while_asked())
        return self._asked

    async def run(self) -> None:
        """The background refresh: a re-read every `refresh_seconds`, skipped while one is in flight."""
        try:
            while True:
                await asyncio.sleep(self._refresh_seconds)
                if self._reader is None or self._reader.done():
                    self.reload_soon()
        finally:
            if self._reader is not None:
                self._reader.cancel()

    async def _read_while_asked(self) -> None:
        while self._done < self._asked:
            covers, forgotten = self._asked, self._forgotten
            read = asyncio.ensure_future(asyncio.to_thread(self._read))
            done, _ = await asyncio.wait({read}, timeout=self._read_timeout)
            if not done:
                self._failed(KeysUnavailable(f"no answer within {self._read_timeout:g} s"))
                self._answer(covers, False)
                # Still one read at a time: this one ends by the store's own timeouts.
                await asyncio.wait({read})
            try:
                keys = read.result()
            except KeysUnavailable as exc:
                self._failed(exc)
                self._answer(covers, False)
                continue
            except Exception:
                logger.exception("reading the keys failed; the keys last read stay in force")
                self._answer(covers, False)
                continue
            if self._forgotten != forgotten:
                continue  # read before a key was forgotten: it may hold that key; read again
            self._use(keys)
            self._answer(covers, True)

    def _read(self) -> dict[str, ApiKey]:
        return self._store.active_by_digest() if self._store is not None else {}

    def _use(self, stored: dict[str, ApiKey]) -> None:
        if self._error is not None:
            logger.warning("key store is back")
        self._error = None
        self._refreshed_at = time.monotonic()
        self._keys = {**stored, **self._bootstrap}

    def _failed(self, exc: KeysUnavailable) -> None:
        if self._error is None:
            logger.warning("key store unavailable, keeping %d keys: %s", len(self._keys), exc)
        self._error = str(exc) or type(exc).__name__
        if not self._keys:
            self._keys = dict(self._bootstrap)

    def _answer(self, covers: int, read: bool) -> None:
        self._done = max(self._done, covers)
        still = []
        for ticket, answered in self._waiting:
            if ticket > covers:
                still.append((ticket, answered))
            elif not answered.done():
                answered.set_result(read)
        self._waiting = still

    def forget_key(self, key_id: str) -> None:
        """Stop accepting `key_id`'s secrets now (it was revoked or rotated); a re-read brings back what
        is still valid (a rotated key's new secret)."""
        kept = {digest: key for digest, key in self._keys.items() if key.id != key_id}
        if len(kept) != len(self._keys):
            self._keys = kept
            self._forgotten += 1

    # Health, for /readyz

    @property
    def key_store_healthy(self) -> bool:
        """The last read of the key store succeeded, and recently (True without a store)."""
        if self._store is None:
            return True
        since = self.seconds_since_key_refresh
        return self._error is None and since is not None and since <= STALE_AFTER_SECONDS

    @property
    def key_store_error(self) -> str | None:
        """Why the last read failed; None when it succeeded."""
        return self._error

    @property
    def seconds_since_key_refresh(self) -> float | None:
        """Seconds since the keys were last read successfully; None when they never were."""
        return None if self._refreshed_at is None else time.monotonic() - self._refreshed_at

    # The request path: memory only

    @property
    def open(self) -> bool:
        return not self._keys

    def principal(self, authorization: str | None) -> Principal:
        keys = self._keys
        if not keys:
            return OPEN
        if not authorization:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, secret = authorization.partition(" ")
        key = keys.get(digest_of(secret.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return Principal(key.id, key.team, key.role)

    def principal_of_key(self, key_id: str) -> Principal | None:
        """The principal of an active key, by its id (a dashboard session names its key so); None when
        the key is unknown or revoked. An open gateway (no keys at all) has no sessions."""
        for key in self._keys.values():
            if key.id == key_id:
                return Principal(key.id, key.team, key.role)
        return None


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise PermissionDenied(
            f"This needs a key with role {' or '.join(roles)}; this key's role is {principal.role}."
        )

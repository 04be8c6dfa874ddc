"""How each backing service a replica serves without stands, as last seen (no I/O): the ledger's database,
the key store, the stored responses and Redis, for `/readyz` (`Services.backing_services`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.batches.store import ThreadedBatchStore
from gateway.identity.auth import Authenticator
from gateway.ledger.ledger import Ledger
from gateway.state.redis_client import RedisProbe
from gateway.stored_responses.store import ThreadedResponseStore


class BackingService(Protocol):
    @property
    def name(self) -> str: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class LedgerDatabase:
    ledger: Ledger
    name: str = "ledger"

    def status(self) -> dict[str, Any]:
        ledger = self.ledger
        return {
            "ok": ledger.failing_since is None,
            "failing_since": ledger.failing_since,
            "error": ledger.last_error,
            "spooled_segments": ledger.waiting_segments,
        }


@dataclass(frozen=True, slots=True)
class KeyDatabase:
    auth: Authenticator
    name: str = "keys"

    def status(self) -> dict[str, Any]:
        since = self.auth.seconds_since_key_refresh
        return {
            "ok": self.auth.key_store_healthy,
            "error": self.auth.key_store_error,
            "seconds_since_refresh": round(since, 1) if since is not None else None,
        }


@dataclass(frozen=True, slots=True)
class StoredResponsesDatabase:
    store: ThreadedResponseStore
    name: str = "stored_responses"

    def status(self) -> dict[str, Any]:
        return self.store.status()


@dataclass(frozen=True, slots=True)
class BatchesDatabase:
    store: ThreadedBatchStore
    name: str = "batches"

    def status(self) -> dict[str, Any]:
        return self.store.status()


@dataclass(frozen=True, slots=True)
class SharedRedis:
    probe: RedisProbe
    name: str = "redis"

    def status(self) -> dict[str, Any]:
        probe = self.probe
        return {"ok": probe.healthy, "failing_since": probe.failing_since, "error": probe.last_error}

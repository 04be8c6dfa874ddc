"""The key store on SQLite and on PostgreSQL (shared by replicas): create, rotate, revoke, list, digests
only at rest; and on PostgreSQL, an outage that neither breaks authentication nor loses a key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.errors import AuthenticationFailed
from gateway.identity.auth import Authenticator
from gateway.identity.keys import (
    InvalidKeyField,
    KeyNotFound,
    KeyStore,
    KeysUnavailable,
    check_new_key,
    digest_of,
)
from gateway.identity.keys_postgres import PostgresKeys
from gateway.identity.keys_sqlite import SqliteKeys
from tests.private_postgres import private_postgres

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        opened = KeyStore(SqliteKeys(tmp_path / "keys.sqlite"))
        yield opened
        opened.close()
        return
    name = f"gw_keys_{uuid.uuid4().hex}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        opened = KeyStore(PostgresKeys(f"postgresql://postgres@127.0.0.1:5432/{name}"))
        try:
            yield opened
        finally:
            opened.close()
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_keys_are_created_rotated_revoked_and_kept_as_digests(store: KeyStore) -> None:
    key, secret = store.create("search", "client", "batch jobs")
    assert store.get(key.id) == key and digest_of(secret) in store.active_by_digest()
    rotated, new_secret = store.rotate(key.id)
    assert rotated.id == key.id and new_secret != secret
    assert set(store.active_by_digest()) == {digest_of(new_secret)}
    store.revoke(key.id)
    assert store.active_by_digest() == {} and store.list() == []
    assert [k.id for k in store.list(include_revoked=True)] == [key.id]
    with pytest.raises(KeyNotFound):
        store.revoke(key.id)
    with pytest.raises(ValueError, match="role"):
        store.create("search", "owner")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("team", "name", "field"),
    [
        ("evil\r\nX-Injected: 1", "", "team"),
        ("search\n", "", "team"),
        ("", "", "team"),
        (" search", "", "team"),
        ("_search", "", "team"),
        ("sé", "", "team"),
        ("s" * 65, "", "team"),
        ("search", "evil\r\nX-Injected: 1", "name"),
        ("search", "nul\x00", "name"),
        ("search", "del\x7f", "name"),
        ("search", "zero\u200bwidth", "name"),
        ("search", "line\u2028separator", "name"),
        ("search", "n" * 101, "name"),
    ],
)
def test_bad_teams_and_names_are_refused_before_anything_is_stored(
    tmp_path: Path, team: str, name: str, field: str
) -> None:
    store = KeyStore(SqliteKeys(tmp_path / "keys.sqlite"))
    with pytest.raises(InvalidKeyField) as refused:
        store.create(team, "client", name)
    assert refused.value.field == field and "\r" not in str(refused.value)
    assert store.list(include_revoked=True) == []
    store.close()


@pytest.mark.parametrize(
    ("team", "name"),
    [
        ("search", "batch jobs"),
        ("default", ""),
        ("t", "from the cli"),
        ("research", "search bot"),
        ("eu:finance.team_2-b", "Zoë's nightly @ 02:00 / v2 (café) #3"),
        ("A" + "b" * 63, "n" * 100),
    ],
)
def test_the_teams_and_names_in_use_are_accepted(team: str, name: str) -> None:
    check_new_key(team, "client", name)


def test_on_postgresql_an_outage_keeps_the_keys_last_read_and_loses_none() -> None:
    with private_postgres() as server:
        store = KeyStore(PostgresKeys(server.url))
        key, secret = store.create("search", "client")
        auth = Authenticator(store)
        assert auth.principal(f"Bearer {secret}").key_id == key.id and auth.key_store_healthy
        server.stop()
        with pytest.raises(KeysUnavailable):
            store.create("search", "client")
        auth.refresh()
        # Authentication goes on with the keys last read; an unknown key is still refused.
        assert auth.principal(f"Bearer {secret}").team == "search"
        with pytest.raises(AuthenticationFailed):
            auth.principal("Bearer gw-not-a-key")
        assert not auth.key_store_healthy and auth.key_store_error
        server.start()
        later, later_secret = store.create("support", "client")  # reconnects by itself
        auth.refresh()
        assert auth.principal(f"Bearer {later_secret}").key_id == later.id
        assert auth.key_store_healthy and auth.key_store_error is None
        store.close()


def test_keys_a_replica_kept_in_sqlite_are_copied_into_postgresql_once(tmp_path: Path) -> None:
    """An upgrade to shared keys loses none: the old per-replica SQLite keys move into PostgreSQL."""
    from gateway.identity.key_backends import open_key_store

    earlier = KeyStore(SqliteKeys(tmp_path / "keys.sqlite"))
    kept, secret = earlier.create("search", "client")
    gone, _ = earlier.create("ads", "client")
    earlier.revoke(gone.id)
    earlier.close()
    with private_postgres() as server:
        shared = open_key_store(server.url, tmp_path)
        assert digest_of(secret) in shared.active_by_digest()
        assert {k.id for k in shared.list(include_revoked=True)} == {kept.id, gone.id}
        shared.close()
        again = open_key_store(server.url, tmp_path)  # a restart copies nothing twice
        assert len(again.list(include_revoked=True)) == 2
        again.close()

"""Virtual keys: teams and roles, hashed at rest, revoked and rotated at once, made by API or CLI."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from tests.conftest import RunningGateway, openai_deployment

Gateway = Callable[..., RunningGateway]
ADMIN = {"authorization": "Bearer sk-boot-admin"}


def team_policy(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream), "small": openai_deployment(upstream)},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"team": {"kind": "metadata", "of": "team"}, "role": {"kind": "metadata", "of": "role"}},
        "rules": [{"name": "search-local", "when": {"signal": "team", "eq": "search"}, "route": "local"}],
        "default_route": "frontier",
    }


def chat(gw: RunningGateway, key: str) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{gw.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    )


def test_keys_carry_their_team_into_routing_and_stop_working_when_revoked(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, tmp_path: Path
) -> None:
    gw = gateway(team_policy(upstreams()), admin_keys="sk-boot-admin", state_dir=tmp_path / "state")
    created = httpx.post(f"{gw.url}/admin/keys", json={"team": "search", "name": "search bot"}, headers=ADMIN)
    assert created.status_code == 200
    key = created.json()
    assert key["role"] == "client" and key["key"].startswith("gw-")
    answer = chat(gw, key["key"])
    assert (answer.headers["x-gateway-rule"], answer.headers["x-gateway-route"]) == ("search-local", "local")

    listed = httpx.get(f"{gw.url}/admin/keys", headers=ADMIN).json()["keys"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    stored = sqlite3.connect(tmp_path / "state" / "keys.sqlite").execute("SELECT * FROM api_keys").fetchall()
    assert key["key"] not in str(stored)  # only the digest is kept

    rotated = httpx.post(f"{gw.url}/admin/keys/{key['id']}/rotate", headers=ADMIN).json()
    assert rotated["id"] == key["id"] and rotated["key"] != key["key"]
    assert chat(gw, key["key"]).status_code == 401
    assert chat(gw, rotated["key"]).status_code == 200

    assert httpx.post(f"{gw.url}/admin/keys/{key['id']}/revoke", headers=ADMIN).status_code == 200
    assert chat(gw, rotated["key"]).status_code == 401
    assert httpx.post(f"{gw.url}/admin/keys/{key['id']}/revoke", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(("role", "may_manage"), [("client", False), ("finance", False), ("admin", True)])
def test_roles_decide_who_manages_keys_and_policies(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, role: str, may_manage: bool
) -> None:
    gw = gateway(team_policy(upstreams()), admin_keys="sk-boot-admin")
    secret = httpx.post(f"{gw.url}/admin/keys", json={"team": "t", "role": role}, headers=ADMIN).json()["key"]
    headers = {"authorization": f"Bearer {secret}"}
    assert chat(gw, secret).status_code == 200
    listing = httpx.get(f"{gw.url}/admin/keys", headers=headers)
    policies = httpx.get(f"{gw.url}/admin/policies", headers=headers)
    assert (listing.status_code, policies.status_code) == ((200, 200) if may_manage else (403, 403))
    bad_role = httpx.post(f"{gw.url}/admin/keys", json={"team": "t", "role": "owner"}, headers=ADMIN)
    assert bad_role.status_code == 400


def test_a_key_made_with_the_cli_works_on_a_running_gateway(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    gw = gateway(team_policy(upstreams()), admin_keys="sk-boot-admin", state_dir=state)
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(state))
    assert main(["keys", "create", "--team", "search", "--name", "from the cli"]) == 0
    secret = json.loads(capsys.readouterr().out)["key"]
    deadline = time.monotonic() + 5
    while chat(gw, secret).status_code != 200:  # the gateway re-reads its keys every 2 s
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert main(["keys", "list"]) == 0
    assert "from the cli" in capsys.readouterr().out
    assert main(["keys", "revoke", "key_nope"]) == 1


INJECTION = "evil\r\nX-Injected: 1"
BAD_NAMES = [
    ({"team": INJECTION}, "team"),
    ({"team": "two words"}, "team"),
    ({"team": "-leading-dash"}, "team"),
    ({"team": "t" * 65}, "team"),
    ({"team": ""}, "team"),
    ({"team": "search", "name": INJECTION}, "name"),
    ({"team": "search", "name": "tab\there"}, "name"),
    ({"team": "search", "name": "bidi \u202e override"}, "name"),
    ({"team": "search", "name": "n" * 101}, "name"),
]
# Team names the tests and policies use, and the kinds of names teams have.
GOOD_TEAMS = [
    "search",
    "default",
    "ads",
    "t",
    "research",
    "team-1",
    "org.unit_2",
    "eu:finance",
    "A" + "b" * 63,
]


def test_bad_team_or_key_names_are_refused_with_a_400_and_nothing_is_made(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway
) -> None:
    gw = gateway(team_policy(upstreams()), admin_keys="sk-boot-admin")
    for body, param in BAD_NAMES:
        refused = httpx.post(f"{gw.url}/admin/keys", json=body, headers=ADMIN)
        assert refused.status_code == 400, body
        error = refused.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            f"invalid_{param}",
        ), body
        assert param in error["message"]
    listed = httpx.get(f"{gw.url}/admin/keys", params={"all": "true"}, headers=ADMIN).json()["keys"]
    assert listed == []
    for team in GOOD_TEAMS:
        made = httpx.post(
            f"{gw.url}/admin/keys", json={"team": team, "name": "batch jobs (nightly) #2 é"}, headers=ADMIN
        )
        assert made.status_code == 200 and made.json()["team"] == team, made.text


def test_the_cli_refuses_bad_names_with_a_message_and_a_nonzero_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path / "state"))
    for arguments, param in [
        (["--team", INJECTION], "team"),
        (["--team", "a b"], "team"),
        (["--team", "search", "--name", INJECTION], "name"),
    ]:
        assert main(["keys", "create", *arguments]) != 0
        captured = capsys.readouterr()
        assert captured.out == "" and param in captured.err, captured
        assert "\r" not in captured.err  # the message quotes the name, never echoes it raw
    assert main(["keys", "list", "--all"]) == 0
    assert json.loads(capsys.readouterr().out) == []

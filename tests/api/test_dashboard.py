"""/dashboard over HTTP: who gets in (finance and admin keys, through a sign-in form and a session cookie;
never a client key, never a key in a URL), that its totals and CSV are the ledger's, and bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.dashboard.views import energy_text
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.identity.keys import digest_of
from tests.api.test_spend import spec as spend_spec
from tests.conftest import RunningGateway, ledger_rows

Gateway = Callable[..., RunningGateway]
ADMIN_KEY = "sk-dashboard-admin"
# Watt-hours per 1,000 input and output tokens: the frontier (the reference route), and the local route.
FRONTIER_ENERGY = {"wh_per_1k_input_tokens": 0.5, "wh_per_1k_output_tokens": 2.0}
LOCAL_ENERGY = {"wh_per_1k_input_tokens": 0.05, "wh_per_1k_output_tokens": 0.2}


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    """The spend tests' routing (team support local, everyone else the frontier, the reference), with a
    monthly budget for team search (the budget-burn table)."""
    return {**spend_spec(upstream), "budgets": {"teams": {"search": {"monthly_usd": 1000.0}}}}


def energy_spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    """`spec` with each deployment's energy set, so that team support's answers (local) save energy
    against the frontier and everyone else's save none."""
    config = spec(upstream)
    config["deployments"]["big"]["energy"] = FRONTIER_ENERGY
    config["deployments"]["small"]["energy"] = LOCAL_ENERGY
    return config


def energy_by_team(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """The ledger's energy used and saved per team, summed from its records."""
    sums: dict[str, tuple[float, float]] = {}
    for row in rows:
        used, saved = sums.get(row["team"], (0.0, 0.0))
        sums[row["team"]] = (used + row["energy_wh"], saved + row["saved_energy_wh"])
    return sums


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def create_key(gw: RunningGateway, team: str, role: str) -> tuple[str, str]:
    made = httpx.post(f"{gw.url}/admin/keys", json={"team": team, "role": role}, headers=bearer(ADMIN_KEY))
    assert made.status_code == 200, made.text
    return str(made.json()["key"]), str(made.json()["id"])


def plant_key(gw: RunningGateway, team: str) -> str:
    """A client key of a team the API no longer accepts (made before team names were checked), written
    into the gateway's key store directly; its secret."""
    secret = "gw-planted-key"
    runtime = gw.app.services
    assert runtime.auth is not None
    with contextlib.closing(sqlite3.connect(runtime.settings.state_dir / "keys.sqlite")) as db, db:
        db.execute(
            "INSERT INTO api_keys VALUES ('key_planted', ?, 'client', '', ?, 0, NULL)",
            (team, digest_of(secret)),
        )
    runtime.auth.refresh()
    return secret


def sign_in(gw: RunningGateway, key: str) -> httpx.Client:
    browser = gw.browser()
    signed = browser.post("/dashboard/login", data={"key": key})
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard", signed.text
    return browser


@pytest.fixture
def served(upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway) -> tuple[RunningGateway, str]:
    """Traffic from two teams; returns the gateway and a finance key."""
    gw = gateway(spec(upstreams(Behaviour(content="one two three four"))), admin_keys=[ADMIN_KEY])
    for team, questions in (("search", 3), ("support", 2)):
        key, _ = create_key(gw, team, "client")
        client = gw.client(api_key=key)
        for n in range(questions):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"q{n}"}])
    finance, _ = create_key(gw, "finance", "finance")
    return gw, finance


def test_signing_in_sets_a_strict_http_only_session_and_shows_the_ledgers_totals(
    served: tuple[RunningGateway, str],
) -> None:
    gw, finance = served
    assert httpx.get(f"{gw.url}/dashboard").headers["location"] == "/dashboard/login"
    browser = gw.browser()
    signed = browser.post("/dashboard/login", data={"key": finance})
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert finance not in signed.headers["set-cookie"] and finance not in signed.headers.get("location", "")
    page = browser.get("/dashboard")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    [ledger] = httpx.get(f"{gw.url}/spend", params={"group_by": ""}, headers=bearer(finance)).json()["rows"]
    assert ledger["requests"] == 5
    assert f'id="total-spend">${ledger["cost_usd"]:,.2f}<' in page.text
    assert f'id="total-saved">${ledger["saved_usd"]:,.2f}<' in page.text
    assert 'id="total-requests">5<' in page.text
    assert "search" in page.text and "support" in page.text
    # Signing out ends the session.
    browser.post("/dashboard/logout")
    assert browser.get("/dashboard").status_code == 303


def test_the_csv_export_is_exactly_the_filtered_view_and_agrees_with_the_ledger(
    served: tuple[RunningGateway, str],
) -> None:
    gw, finance = served
    browser = sign_in(gw, finance)
    today = datetime.now(UTC).date()
    window = {"since": today.isoformat(), "until": (today + timedelta(days=1)).isoformat()}
    exported = browser.get("/dashboard/export.csv", params={**window, "group": "team"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = {row["team"]: row for row in csv.DictReader(io.StringIO(exported.text))}
    ledger = httpx.get(
        f"{gw.url}/spend", params={"group_by": "team", **window}, headers=bearer(finance)
    ).json()["rows"]
    assert set(rows) == {row["team"] for row in ledger} == {"search", "support"}
    for row in ledger:
        mine = rows[row["team"]]
        assert int(mine["requests"]) == row["requests"]
        assert float(mine["cost_usd"]) == pytest.approx(row["cost_usd"], rel=1e-9)
        assert float(mine["saved_usd"]) == pytest.approx(row["saved_usd"], rel=1e-9)
    # Filtered to one team, the export holds only that team.
    only = browser.get("/dashboard/export.csv", params={**window, "group": "route", "team": "support"})
    assert [row["route"] for row in csv.DictReader(io.StringIO(only.text))] == ["local"]
    # A period before any traffic is empty, not an error.
    before = {"since": "2020-01-01", "until": "2020-01-02"}
    assert browser.get("/dashboard/export.csv", params=before).text.strip().count("\n") == 0


def test_client_keys_bad_keys_forged_cookies_and_revoked_keys_get_nothing(
    served: tuple[RunningGateway, str],
) -> None:
    gw, _ = served
    client_key, _ = create_key(gw, "search", "client")
    browser = gw.browser()
    refused = browser.post("/dashboard/login", data={"key": client_key})
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    assert browser.post("/dashboard/login", data={"key": "sk-wrong"}).status_code == 401
    assert browser.post("/dashboard/login", data={}).status_code == 401
    forged = httpx.get(f"{gw.url}/dashboard", cookies={"gateway_session": "eyJrZXkiOiJ4In0.forged"})
    assert forged.status_code == 303
    assert httpx.get(f"{gw.url}/dashboard/export.csv").status_code == 303

    finance, finance_id = create_key(gw, "finance", "finance")
    signed = sign_in(gw, finance)
    assert signed.get("/dashboard").status_code == 200
    # A finance key reads spend but cannot change policies.
    assert httpx.put(f"{gw.url}/admin/policies/x", content=b"{}", headers=bearer(finance)).status_code == 403
    revoked = httpx.post(f"{gw.url}/admin/keys/{finance_id}/revoke", headers=bearer(ADMIN_KEY))
    assert revoked.status_code == 200
    assert signed.get("/dashboard").status_code == 303  # the session ended with its key


def test_bad_filters_are_explained_and_team_names_cannot_inject_script(
    served: tuple[RunningGateway, str],
) -> None:
    gw, finance = served
    browser = sign_in(gw, finance)
    for params in (
        {"since": "yesterday"},
        {"group": "secret"},
        {"since": "2026-02-02", "until": "2026-02-01"},
    ):
        page = browser.get("/dashboard", params=params)
        assert page.status_code == 400 and 'role="alert"' in page.text
    hostile = plant_key(gw, "</script><script>alert(1)</script>")
    gw.client(api_key=hostile).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "x"}]
    )
    page = browser.get("/dashboard", params={"group": "team"})
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert page.text.count("<script") == 3  # the chart data and the two served scripts
    assert browser.get("/dashboard/static/plotly.min.js").status_code == 200
    assert browser.get("/dashboard/static/..%2Fsession.py").status_code == 404


def test_energy_beside_cost_on_the_page_and_in_the_csv_is_the_ledgers(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, bg: BackgroundLoop
) -> None:
    gw = gateway(energy_spec(upstreams(Behaviour(content="one two three four"))), admin_keys=[ADMIN_KEY])
    for team, questions in (("search", 3), ("support", 2)):
        key, _ = create_key(gw, team, "client")
        for n in range(questions):
            gw.client(api_key=key).chat.completions.create(
                model="auto", messages=[{"role": "user", "content": f"q{n}"}]
            )
    finance, _ = create_key(gw, "finance", "finance")
    ledger = energy_by_team(ledger_rows(gw, bg))
    used, saved = (sum(figures) for figures in zip(*ledger.values(), strict=True))
    assert ledger["search"][0] > 0 and ledger["search"][1] == 0  # on the reference route: nothing saved
    assert ledger["support"][1] > 0

    page = sign_in(gw, finance).get("/dashboard", params={"group": "team"}).text
    for element, expected in (("total-energy", used), ("total-energy-saved", saved)):
        found = re.search(f'id="{element}" data-wh="([^"]+)">([^<]+)<', page)
        assert found is not None, element
        assert float(found[1]) == pytest.approx(expected, rel=1e-9)
        assert found[2] == energy_text(expected)
    assert "Energy is an estimate, not a measurement" in page
    # A saving of 0 against a known reference is known: shown as 0, not as unknown.
    assert '<td class="energy-saved" data-wh="0.0">0 Wh</td>' in page

    exported = sign_in(gw, finance).get("/dashboard/export.csv", params={"group": "team"})
    rows = {row["team"]: row for row in csv.DictReader(io.StringIO(exported.text))}
    assert set(rows) == set(ledger)
    for team, (team_used, team_saved) in ledger.items():
        assert float(rows[team]["estimated_energy_wh"]) == pytest.approx(team_used, rel=1e-9)
        assert float(rows[team]["estimated_saved_energy_wh"]) == pytest.approx(
            team_saved, rel=1e-9, abs=1e-12
        )

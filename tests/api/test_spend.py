"""`GET /spend` as finance reads it: keys with roles (client, finance, admin), per-team spend and savings
that add up to the usage the clients saw, JSON and CSV, time filters, and bad queries."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from tests.conftest import RunningGateway, openai_deployment

Gateway = Callable[..., RunningGateway]
ADMIN_KEY = "sk-spend-admin"
# USD per million tokens: the frontier deployment, and a ten times cheaper local one.
FRONTIER_PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}
LOCAL_PRICE = {"input_per_mtok": 100, "output_per_mtok": 1000}
ANSWER = "one two three four five six seven eight nine ten"
INT_FIELDS = ("requests", "prompt_tokens", "completion_tokens")
ZERO_FIELDS = ("unpriced_requests", "estimated_requests", "cached_answers", "errors")
MONEY_FIELDS = ("cost_usd", "reference_usd", "saved_usd")


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    """Team support is sent to the cheap local route; everyone else to the frontier (the reference)."""
    return {
        "deployments": {
            "big": openai_deployment(upstream, price=FRONTIER_PRICE),
            "small": openai_deployment(upstream, price=LOCAL_PRICE),
        },
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"team": {"kind": "metadata", "of": "team"}},
        "rules": [{"name": "support-local", "when": {"signal": "team", "eq": "support"}, "route": "local"}],
        "default_route": "frontier",
        "reference_route": "frontier",
    }


@dataclass
class Keys:
    search: str
    support: str
    finance: str


@dataclass
class Seen:
    """What one team's clients were told they used."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    reference_usd: float = 0.0

    def add(self, usage: openai.types.CompletionUsage | None, price: dict[str, int]) -> None:
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost_usd += cost(usage, price)
        self.reference_usd += cost(usage, FRONTIER_PRICE)

    def row(self, **groups: str) -> dict[str, Any]:
        return {
            **groups,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": pytest.approx(self.cost_usd, rel=1e-9),
            "reference_usd": pytest.approx(self.reference_usd, rel=1e-9),
            "saved_usd": pytest.approx(self.reference_usd - self.cost_usd, rel=1e-9),
            "unpriced_requests": 0,
            "estimated_requests": 0,
            "cached_answers": 0,
            "errors": 0,
        }


def cost(usage: openai.types.CompletionUsage, price: dict[str, int]) -> float:
    return (
        usage.prompt_tokens * price["input_per_mtok"] + usage.completion_tokens * price["output_per_mtok"]
    ) / 1e6


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def create_key(gw: RunningGateway, team: str, role: str) -> str:
    created = httpx.post(
        f"{gw.url}/admin/keys",
        json={"team": team, "role": role, "name": f"{team} {role}"},
        headers=bearer(ADMIN_KEY),
    )
    assert created.status_code == 200, created.text
    assert (created.json()["team"], created.json()["role"]) == (team, role)
    secret: str = created.json()["key"]
    return secret


def spend(gw: RunningGateway, key: str, **params: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/spend", params=params, headers=bearer(key), timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]


@pytest.fixture
def served(upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway) -> tuple[RunningGateway, Keys]:
    gw = gateway(spec(upstreams(Behaviour(content=ANSWER, chunks=5))), admin_keys=[ADMIN_KEY])
    keys = Keys(
        search=create_key(gw, "search", "client"),
        support=create_key(gw, "support", "client"),
        finance=create_key(gw, "finance", "finance"),
    )
    return gw, keys


def ask_per_team(gw: RunningGateway, keys: Keys) -> dict[str, Seen]:
    """Two plain requests and one stream for search, three plain ones for support."""
    seen = {"search": Seen(), "support": Seen()}
    search, support = gw.client(api_key=keys.search), gw.client(api_key=keys.support)
    for words in ("Where is the index kept", "How fresh is it"):
        answer = search.chat.completions.create(model="auto", messages=[{"role": "user", "content": words}])
        seen["search"].add(answer.usage, FRONTIER_PRICE)
    chunks = list(
        search.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Stream me the ranking story please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    seen["search"].add(chunks[-1].usage, FRONTIER_PRICE)
    for words in ("My order is late", "Refund please", "Who do I call about an invoice"):
        raw = support.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": words}]
        )
        assert raw.headers["x-gateway-route"] == "local"
        seen["support"].add(raw.parse().usage, LOCAL_PRICE)
    return seen


def test_keys_are_checked_and_roles_enforced(served: tuple[RunningGateway, Keys]) -> None:
    gw, keys = served
    with pytest.raises(openai.AuthenticationError) as unknown:
        gw.client(api_key="sk-nobody").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.status_code == 401 and unknown.value.code == "invalid_api_key"
    assert_error(spend(gw, "sk-nobody"), 401, "invalid_api_key")
    assert_error(httpx.get(f"{gw.url}/spend"), 401, "invalid_api_key")

    # A client key may chat, and nothing else.
    assert_error(spend(gw, keys.search), 403, "permission_denied")
    assert_error(httpx.get(f"{gw.url}/admin/keys", headers=bearer(keys.search)), 403, "permission_denied")
    made = httpx.post(
        f"{gw.url}/admin/keys", json={"team": "search", "role": "admin"}, headers=bearer(keys.search)
    )
    assert_error(made, 403, "permission_denied")
    policies = f"{gw.url}/admin/policies"
    live = httpx.get(policies, headers=bearer(ADMIN_KEY)).json()["live"]
    assert (live["name"], live["version"]) == ("policy-0", 1)
    edit = "routes:\n  frontier: {deployments: [big]}\ndefault_route: frontier\n"
    assert_error(
        httpx.put(f"{policies}/policy-0", content=edit, headers=bearer(keys.search)), 403, "permission_denied"
    )
    assert_error(httpx.get(policies, headers=bearer(keys.search)), 403, "permission_denied")

    # Finance reads spend and metrics, and cannot change routing or keys.
    assert spend(gw, keys.finance).status_code == 200
    assert httpx.get(f"{gw.url}/metrics", headers=bearer(keys.finance)).status_code == 200
    assert_error(httpx.get(f"{gw.url}/metrics", headers=bearer(keys.search)), 403, "permission_denied")
    assert_error(
        httpx.put(f"{policies}/policy-0", content=edit, headers=bearer(keys.finance)),
        403,
        "permission_denied",
    )
    rollback = httpx.post(f"{policies}/policy-0/rollback/1", headers=bearer(keys.finance))
    assert_error(rollback, 403, "permission_denied")
    assert_error(httpx.get(f"{gw.url}/admin/keys", headers=bearer(keys.finance)), 403, "permission_denied")
    after = httpx.get(policies, headers=bearer(ADMIN_KEY)).json()["live"]
    assert after["version"] == 1 and after["last_error"] is None
    versions = httpx.get(f"{policies}/policy-0/versions", headers=bearer(ADMIN_KEY)).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    # The admin may read spend too.
    assert spend(gw, ADMIN_KEY).status_code == 200


def test_spend_per_team_adds_up_to_what_clients_were_told(served: tuple[RunningGateway, Keys]) -> None:
    gw, keys = served
    before = time.time()
    seen = ask_per_team(gw, keys)
    assert seen["search"].requests == 3 and seen["support"].requests == 3
    assert seen["support"].reference_usd > seen["support"].cost_usd > 0  # routing saved something

    by_team = spend(gw, keys.finance)
    assert by_team.status_code == 200
    body = by_team.json()
    assert (body["group_by"], body["since"], body["until"]) == (["team"], None, None)
    assert body["rows"] == [seen["search"].row(team="search"), seen["support"].row(team="support")]
    assert body["rows"][0]["saved_usd"] == 0.0  # the frontier is the reference: nothing saved

    one_team = spend(gw, keys.finance, group_by="team,route", team="support").json()["rows"]
    assert one_team == [seen["support"].row(team="support", route="local")]
    both = spend(gw, keys.finance, group_by="team,route").json()
    assert both["group_by"] == ["team", "route"]
    assert both["rows"] == [
        seen["search"].row(team="search", route="frontier"),
        seen["support"].row(team="support", route="local"),
    ]

    today = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d")
    total = Seen(
        requests=6,
        prompt_tokens=seen["search"].prompt_tokens + seen["support"].prompt_tokens,
        completion_tokens=seen["search"].completion_tokens + seen["support"].completion_tokens,
        cost_usd=seen["search"].cost_usd + seen["support"].cost_usd,
        reference_usd=seen["search"].reference_usd + seen["support"].reference_usd,
    )
    assert spend(gw, keys.finance, group_by="day").json()["rows"] == [total.row(day=today)]
    assert spend(gw, keys.finance, group_by="").json()["rows"] == [total.row()]


def test_csv_says_the_same_as_json(served: tuple[RunningGateway, Keys]) -> None:
    gw, keys = served
    seen = ask_per_team(gw, keys)
    rows = spend(gw, keys.finance, group_by="team,route").json()["rows"]
    response = spend(gw, keys.finance, group_by="team,route", format="csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == ["team", "route", *INT_FIELDS, *MONEY_FIELDS, *ZERO_FIELDS]
    parsed = list(reader)
    assert len(parsed) == len(rows) == 2
    for line, row in zip(parsed, rows, strict=True):
        assert (line["team"], line["route"]) == (row["team"], row["route"])
        for name in (*INT_FIELDS, *ZERO_FIELDS):
            assert int(line[name]) == row[name]
        for name in MONEY_FIELDS:
            assert line[name] == f"{row[name]:.6f}"
        told = seen[line["team"]]
        assert [int(line[name]) for name in INT_FIELDS] == [
            told.requests,
            told.prompt_tokens,
            told.completion_tokens,
        ]
        money = [float(line[name]) for name in MONEY_FIELDS]
        expected = [told.cost_usd, told.reference_usd, told.reference_usd - told.cost_usd]
        assert money == pytest.approx(expected, abs=5e-7)


def test_since_and_until_select_by_arrival_time(served: tuple[RunningGateway, Keys]) -> None:
    gw, keys = served
    before = time.time()
    seen = ask_per_team(gw, keys)
    after = time.time()
    expected = [seen["search"].row(team="search"), seen["support"].row(team="support")]

    assert spend(gw, keys.finance, until="2020-01-01").json()["rows"] == []
    assert spend(gw, keys.finance, since=str(after + 60)).json()["rows"] == []
    window = spend(gw, keys.finance, since=str(before - 1), until=str(after + 1)).json()
    assert (window["since"], window["until"]) == (before - 1, after + 1)
    assert window["rows"] == expected
    day = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d")
    assert (
        spend(gw, keys.finance, since=day).json()["since"]
        == datetime.fromisoformat(day + "T00:00:00+00:00").timestamp()
    )
    iso = datetime.fromtimestamp(before - 1, UTC).isoformat()
    assert spend(gw, keys.finance, since=iso).json()["rows"] == expected
    # `until` is exclusive: nothing arrived before the first request.
    assert spend(gw, keys.finance, until=str(before - 1)).json()["rows"] == []


def test_bad_queries_are_400_naming_the_parameter(served: tuple[RunningGateway, Keys]) -> None:
    gw, keys = served
    bad_group = spend(gw, keys.finance, group_by="team,prompt")
    assert_error(bad_group, 400, None, "group_by")
    assert "cannot group spend by prompt" in bad_group.json()["error"]["message"]
    assert_error(spend(gw, keys.finance, group_by="team,team"), 400, None, "group_by")
    bad_since = spend(gw, keys.finance, since="last tuesday")
    assert_error(bad_since, 400, None, "since")
    assert "'last tuesday'" in bad_since.json()["error"]["message"]
    assert_error(spend(gw, keys.finance, until="soon"), 400, None, "until")
    bad_format = spend(gw, keys.finance, format="xml")
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "query.format"
    # The role is checked before the parameters: a client key gets 403, not 400.
    assert spend(gw, keys.search, group_by="nonsense").status_code == 403

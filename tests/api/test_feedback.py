"""`POST /v1/feedback` as a product team uses it: rate an answer by the `x-request-id` the gateway
returned, only within the key's own team, with bad input refused in OpenAI's error format and nothing
kept; then `gateway router feedback` turns the rated local answers into the router's training data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.ledger.sqlite import SqliteLedgerStore
from tests.conftest import RunningGateway, openai_deployment
from tests.gateway_process import run_command

Gateway = Callable[..., RunningGateway]
ADMIN_KEY = "sk-feedback-admin"


def spec(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    """Questions mentioning "proof" go to the frontier, the rest to the local route; bodies are logged."""
    return {
        "deployments": {"big": openai_deployment(upstream), "small": openai_deployment(upstream)},
        "routes": {"frontier": ["big"], "local": ["small"]},
        "signals": {"hard": {"kind": "keywords", "in": "user", "words": ["proof"]}},
        "rules": [{"name": "hard-to-frontier", "when": {"signal": "hard", "eq": True}, "route": "frontier"}],
        "default_route": "local",
        "log_bodies": True,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def new_key(gw: RunningGateway, team: str) -> str:
    made = httpx.post(f"{gw.url}/admin/keys", json={"team": team}, headers=bearer(ADMIN_KEY))
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


def ask(gw: RunningGateway, key: str, question: str) -> str:
    """The request id the gateway returned for a plain question."""
    raw = gw.client(api_key=key).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": question}]
    )
    raw.parse()
    return str(raw.headers["x-request-id"])


def rate(gw: RunningGateway, key: str | None, **body: Any) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/feedback", json=body, headers=bearer(key) if key else {}, timeout=30)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.fixture
def served(upstreams: Callable[..., FakeOpenAIUpstream], gateway: Gateway, tmp_path: Path) -> RunningGateway:
    return gateway(spec(upstreams(Behaviour(content="Paris."))), admin_keys=[ADMIN_KEY])


def stored(tmp_path: Path) -> SqliteLedgerStore:
    return SqliteLedgerStore(tmp_path / "state-0" / "ledger.sqlite")


def test_a_team_rates_its_own_answers_and_the_rating_is_kept_with_the_request(
    served: RunningGateway, tmp_path: Path
) -> None:
    search = new_key(served, "search")
    request_id = ask(served, search, "What is the capital of France?")

    # Rated at once: the record may still be in the spool, and must be found anyway.
    given = rate(served, search, request_id=request_id, rating=0.0, label="wrong", comment="it is Lyon")
    assert given.status_code == 200, given.text
    assert given.json()["object"] == "feedback" and given.json()["request_id"] == request_id
    again = rate(served, search, request_id=request_id, rating=1.0)
    assert again.status_code == 200, again.text

    [rated] = stored(tmp_path).rated_requests()
    # The latest rating wins; the label given with the first is not carried over.
    assert (rated.request_id, rated.team, rated.route, rated.rating, rated.label) == (
        request_id, "search", "local", 1.0, None,
    )  # fmt: skip


def test_a_key_cannot_rate_another_teams_request_and_bad_feedback_changes_nothing(
    served: RunningGateway, tmp_path: Path
) -> None:
    search, support = new_key(served, "search"), new_key(served, "support")
    request_id = ask(served, search, "What is the capital of France?")

    assert_error(rate(served, support, request_id=request_id, rating=1.0), 404, "request_id")
    assert_error(rate(served, search, request_id="no-such-request", rating=1.0), 404, "request_id")
    assert_error(rate(served, None, request_id=request_id, rating=1.0), 401)
    for bad in (
        {"request_id": request_id, "rating": 1.5},
        {"request_id": request_id, "rating": -0.1},
        {"request_id": request_id},  # neither a rating nor a label
        {"request_id": request_id, "label": ""},
        {"request_id": "", "rating": 1.0},
        {"request_id": request_id, "rating": 1.0, "stars": 5},
        {"request_id": request_id, "label": "x" * 65},
    ):
        assert_error(rate(served, search, **bad), 400)
    not_json = httpx.post(
        f"{served.url}/v1/feedback", content=b"{not json", headers=bearer(search), timeout=30
    )
    assert_error(not_json, 400)
    assert stored(tmp_path).rated_requests() == []

    # An admin may rate any team's request.
    assert rate(served, ADMIN_KEY, request_id=request_id, label="reviewed").status_code == 200
    [rated] = stored(tmp_path).rated_requests()
    assert (rated.team, rated.rating, rated.label) == ("search", None, "reviewed")


def test_rated_local_answers_become_training_data_for_the_router(
    served: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key(served, "search")
    good = ask(served, key, "What is the capital of France?")
    bad = ask(served, key, "How many legs has a spider?")
    unrated = ask(served, key, "Name a prime number.")
    frontier = [ask(served, key, f"Give a proof that there are infinitely many primes ({n})") for n in (1, 2)]
    for request_id, rating in ((good, 1.0), (bad, 0.0), (frontier[0], 1.0), (frontier[1], 0.5)):
        assert rate(served, key, request_id=request_id, rating=rating).status_code == 200
    assert rate(served, key, request_id=unrated, label="funny").status_code == 200

    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path / "state-0"))
    output = tmp_path / "rated.jsonl"
    done = run_command("router", "feedback", "--output", str(output))
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    # The frontier's score for a local answer is its mean rating over the same feedback: 0.75.
    assert sorted((r["prompt"], r["weak"], r["strong"]) for r in rows) == [
        ("How many legs has a spider?", 0.0, 0.75),
        ("What is the capital of France?", 1.0, 0.75),
    ]
    assert "2 answered by frontier" in done.stdout and "1 labelled, not rated" in done.stdout
    assert {r["weak_answer"] for r in rows} == {"Paris."}  # the local answers, for `gateway eval cascade`

    # The file is the format the router's commands read.
    from gateway.router.outcomes import load_outcomes

    assert [o.strong > o.weak for o in load_outcomes(output).outcomes] == [
        r["strong"] > r["weak"] for r in rows
    ]

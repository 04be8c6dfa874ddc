"""The exact cache through the gateway: repeated deterministic requests are answered from the cache
at $0, only within the caller's team, only for the same context, and replayed as streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.fakes.script import Behaviour
from gateway.identity.keys import KeyStore
from gateway.identity.keys_sqlite import SqliteKeys
from tests.conftest import RunningGateway, openai_deployment
from tests.path.test_admit_and_record import ledger_rows

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PRICE = {"input_per_mtok": 1000, "output_per_mtok": 10000}


def cached_spec(upstream: FakeOpenAIUpstream, **cache: Any) -> dict[str, Any]:
    return {
        "deployments": {"big": openai_deployment(upstream, price=PRICE)},
        "routes": {"frontier": ["big"], "again": ["big"]},
        "rules": [
            {
                "name": "cached",
                "when": {"signal": "team", "ne": "nobody"},
                "route": "frontier",
                "cache": {"enabled": True, **cache},
            },
        ],
        "signals": {"team": {"kind": "metadata", "of": "team"}},
        "default_route": "frontier",
        "reference_route": "frontier",
    }


def ask(gw: RunningGateway, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(body.pop("headers", {}))
    payload = {"model": "auto", "messages": QUESTION, "temperature": 0, **body}
    return httpx.post(f"{gw.base_url}/chat/completions", json=payload, headers=headers, timeout=30)


def client_keys(state: Path, *teams: str) -> list[str]:
    """A client key for each team, in the gateway's key store under `state`."""
    store = KeyStore(SqliteKeys(state / "keys.sqlite"))
    try:
        return [store.create(team, "client")[1] for team in teams]
    finally:
        store.close()


def chats(upstream: FakeOpenAIUpstream) -> int:
    return len(upstream.requests)


def test_a_repeated_question_is_answered_from_the_cache_at_no_cost(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream), state_dir=tmp_path / "state")
    first = ask(gw)
    # Spacing and case of the question do not matter; the answer is the same bytes.
    second = ask(gw, messages=[{"role": "user", "content": "  what is the capital   of France? "}])
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "exact"
    assert second.content == first.content
    assert chats(upstream) == 1
    assert float(second.headers["x-gateway-cost-usd"]) == 0.0
    assert float(second.headers["x-gateway-saved-usd"]) == pytest.approx(
        float(first.headers["x-gateway-cost-usd"])
    )
    rows = ledger_rows(gw, bg, tmp_path / "state")
    assert [(row["cache"], row["cost_usd"] == 0) for row in rows] == [("miss", False), ("exact", True)]
    assert rows[1]["saved_usd"] == pytest.approx(rows[0]["cost_usd"])
    assert rows[1]["upstream_ms"] is None


def test_one_team_never_receives_another_teams_answer_unless_the_rule_shares_a_namespace(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    key_a, key_b = client_keys(state, "alpha", "beta")
    upstream = upstreams()
    gw = gateway(cached_spec(upstream), state_dir=state)
    assert ask(gw, key_a).headers["x-gateway-cache"] == "miss"
    assert ask(gw, key_b).headers["x-gateway-cache"] == "miss"
    assert ask(gw, key_a).headers["x-gateway-cache"] == "exact"
    assert chats(upstream) == 2

    shared_upstream = upstreams()
    shared = gateway(cached_spec(shared_upstream, namespace="faq"), state_dir=state)
    assert ask(shared, key_a).headers["x-gateway-cache"] == "miss"
    assert ask(shared, key_b).headers["x-gateway-cache"] == "exact"
    assert chats(shared_upstream) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "system", "content": "Answer in French."}, *QUESTION]},
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"max_tokens": 5},
        {"seed": 7},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"response_format": {"type": "json_object"}},
    ],
    ids=["system prompt", "question", "max_tokens", "seed", "tools", "response format"],
)
def test_a_different_context_never_hits(
    change: dict[str, Any],
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream))
    ask(gw)
    assert ask(gw, **change).headers["x-gateway-cache"] == "miss"
    assert chats(upstream) == 2


def test_the_same_question_on_another_route_misses(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams()
    spec = cached_spec(upstream)
    spec["signals"]["user"] = {"kind": "metadata", "of": "user"}
    spec["rules"] = [
        {"name": rule, "when": {"signal": "user", "eq": user}, "route": route, "cache": {"enabled": True}}
        for rule, user, route in (("to-frontier", "a", "frontier"), ("to-again", "b", "again"))
    ]
    gw = gateway(spec)
    assert ask(gw, user="a").headers["x-gateway-cache"] == "miss"
    assert ask(gw, user="a").headers["x-gateway-cache"] == "exact"  # `user` itself is not context
    other = ask(gw, user="b")
    assert (other.headers["x-gateway-route"], other.headers["x-gateway-cache"]) == ("again", "miss")
    assert chats(upstream) == 2


def test_only_deterministic_requests_are_cached_unless_the_rule_says_otherwise(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream))
    assert "x-gateway-cache" not in ask(gw, temperature=0.7).headers
    assert "x-gateway-cache" not in ask(gw, temperature=0.7).headers
    assert chats(upstream) == 2

    loose_upstream = upstreams()
    loose = gateway(cached_spec(loose_upstream, any_temperature=True))
    ask(loose, temperature=0.7)
    assert ask(loose, temperature=0.7).headers["x-gateway-cache"] == "exact"
    assert ask(loose, temperature=0.2).headers["x-gateway-cache"] == "miss"  # sampling is context


def test_a_client_can_opt_out_and_errors_and_tool_calls_are_not_kept(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream))
    ask(gw)
    opted_out = ask(gw, headers={"cache-control": "no-cache"})
    assert opted_out.status_code == 200 and "x-gateway-cache" not in opted_out.headers
    assert chats(upstream) == 2

    upstream.script(Behaviour(status=500), Behaviour(status=500), Behaviour(status=500))
    question = [{"role": "user", "content": "Will this fail?"}]
    assert ask(gw, messages=question).status_code >= 500
    assert ask(gw, messages=question).headers["x-gateway-cache"] == "miss"  # the error was not kept

    upstream.script(Behaviour(tool_call=True))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    ask(gw, tools=tools)
    assert ask(gw, tools=tools).headers["x-gateway-cache"] == "miss"  # a tool call was not kept


def test_entries_expire_and_the_least_recently_used_are_evicted(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream, ttl_seconds=1), cache_max_entries=2)
    ask(gw)
    assert ask(gw).headers["x-gateway-cache"] == "exact"
    time.sleep(1.1)
    assert ask(gw).headers["x-gateway-cache"] == "miss"  # expired

    questions = [[{"role": "user", "content": f"Question number {n}?"}] for n in range(3)]
    lasting = gateway(cached_spec(upstreams(), ttl_seconds=3600), cache_max_entries=2)
    for messages in questions:
        ask(lasting, messages=messages)
    assert ask(lasting, messages=questions[2]).headers["x-gateway-cache"] == "exact"
    assert ask(lasting, messages=questions[0]).headers["x-gateway-cache"] == "miss"  # evicted


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_hit_on_a_streaming_request_is_replayed_as_a_stream(
    include_usage: bool, upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway]
) -> None:
    upstream = upstreams()
    gw = gateway(cached_spec(upstream))
    plain = gw.client().chat.completions.create(model="auto", messages=QUESTION, temperature=0)  # type: ignore[arg-type]
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    assert raw.headers["x-gateway-cache"] == "exact"
    chunks = list(raw.parse())
    assert chats(upstream) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage == ([plain.usage] if include_usage else [])


def test_admins_invalidate_an_entry_a_team_or_everything(
    upstreams: Callable[..., FakeOpenAIUpstream], gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store = KeyStore(SqliteKeys(state / "keys.sqlite"))
    (_, alpha), (_, beta), (_, admin) = (
        store.create("alpha", "client"),
        store.create("beta", "client"),
        store.create("ops", "admin"),
    )
    store.close()
    gw = gateway(cached_spec(upstreams()), state_dir=state)
    other = [{"role": "user", "content": "And of Italy?"}]

    def drop(secret: str, **params: Any) -> httpx.Response:
        return httpx.delete(
            f"{gw.url}/admin/cache", params=params, headers={"authorization": f"Bearer {secret}"}
        )

    entry = ask(gw, alpha).headers["x-gateway-cache-key"]
    ask(gw, alpha, messages=other)
    ask(gw, beta)
    assert drop(alpha, team="alpha").status_code == 403  # a client key may not
    assert drop(admin).status_code == 400  # nothing named: refuse rather than empty everything
    assert drop(admin, team="alpha", key=entry).json()["dropped"] == 1
    assert ask(gw, alpha).headers["x-gateway-cache"] == "miss"
    assert ask(gw, alpha, messages=other).headers["x-gateway-cache"] == "exact"
    assert drop(admin, team="alpha").json()["dropped"] == 2
    assert ask(gw, alpha, messages=other).headers["x-gateway-cache"] == "miss"
    assert ask(gw, beta).headers["x-gateway-cache"] == "exact"  # another team's entries stay
    assert drop(admin, all="true").json()["dropped"] == 2  # beta's, and alpha's kept again since
    assert ask(gw, beta).headers["x-gateway-cache"] == "miss"

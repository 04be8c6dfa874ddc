"""Replay: recorded decisions re-decided under the same policy match exactly; a changed policy shows moves."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import main
from gateway.fakes.background import BackgroundLoop
from gateway.fakes.openai_upstream import FakeOpenAIUpstream
from gateway.policy.records import DecisionLog, DecisionRecord
from tests.conftest import RunningGateway, openai_deployment, split_config

POLICY: dict[str, Any] = {
    "routes": {"frontier": ["big"], "local": ["small"]},
    "signals": {
        "tokens": {"kind": "size", "of": "prompt_tokens"},
        "money": {"kind": "keywords", "words": ["refund", "invoice"], "in": "user"},
        "team": {"kind": "metadata", "of": "team"},
    },
    "rules": [
        {"name": "money-local", "when": {"signal": "money", "eq": True}, "route": "local"},
        {"name": "short-local", "when": {"signal": "tokens", "lt": 15}, "route": "local"},
    ],
    "default_route": "frontier",
}
WORDS = ["weather", "poem", "hello", "plan", "garden", "music"]


@pytest.fixture
def recorded(
    upstreams: Callable[..., FakeOpenAIUpstream],
    gateway: Callable[..., RunningGateway],
    bg: BackgroundLoop,
    tmp_path: Path,
) -> tuple[Path, Path]:
    """A gateway that served 150 varied requests; its deployments file and recorded decisions."""
    spec = {
        "deployments": {"big": openai_deployment(upstreams()), "small": openai_deployment(upstreams())},
        **POLICY,
    }
    gw = gateway(spec)
    rng = random.Random(3)
    with httpx.Client(base_url=gw.base_url) as client:
        for index in range(150):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
            if rng.random() < 0.2:
                text += " and a refund"
            body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
            assert client.post(
                "/chat/completions", json=body, headers={"x-request-id": f"r{index}"}
            ).is_success
    records = gw.app.services.decisions
    assert records is not None
    bg.run(records.flush())
    return gw.app.services.settings.config, gw.app.services.settings.state_dir / "decisions.sqlite"


def write(tmp_path: Path, name: str, policy: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(split_config({"deployments": {}, **policy})[1]))
    return str(path)


def run_replay(
    candidate: str, recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    config, records = recorded
    argv = ["policy", "replay", candidate, "--records", str(records), "--since", "all", "--json"]
    assert main([*argv, "--config", str(config)]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_the_same_policy_reproduces_every_recorded_route(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_replay(write(tmp_path, "same.yaml", POLICY), recorded, capsys)
    assert report["records"] == report["replayed"] == report["unchanged"] == 150
    assert report["changes"] == [] and report["routes_before"] == report["routes_after"]
    assert set(report["routes_before"]) == {"local", "frontier"}


def test_a_changed_policy_reports_the_moves(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stricter = {
        **POLICY,
        "rules": [POLICY["rules"][0], {**POLICY["rules"][1], "when": {"signal": "tokens", "lt": 8}}],
    }
    report = run_replay(write(tmp_path, "stricter.yaml", stricter), recorded, capsys)
    assert report["replayed"] == 150 and report["changed"] > 0
    assert {(c["from_route"], c["to_route"]) for c in report["changes"]} == {("local", "frontier")}
    assert report["routes_after"]["frontier"] > report["routes_before"]["frontier"]

    by_team = {**POLICY, "rules": [{"name": "ads", "when": {"signal": "team", "eq": "ads"}, "route": "local"},
                                   *POLICY["rules"]]}  # fmt: skip
    assert run_replay(write(tmp_path, "team.yaml", by_team), recorded, capsys)["not_replayable"] == 150

    plain = run_replay(write(tmp_path, "plain.yaml", stricter), recorded, capsys)
    assert plain == report  # deterministic


def test_replay_prints_a_table_for_people(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, records = recorded
    candidate = write(tmp_path, "all-frontier.yaml", {**POLICY, "rules": []})
    assert main(["policy", "replay", candidate, "--records", str(records), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "| short-local → local | default → frontier |" in captured.out
    assert "replayed 150/150 (100%)" in captured.err


def test_records_survive_a_failed_write_and_go_out_on_the_next(tmp_path: Path, bg: BackgroundLoop) -> None:
    log = DecisionLog(tmp_path / "decisions.sqlite")
    record = DecisionRecord("r1", 1.0, "p", None, "default", "frontier", "big", 200, 1.5, {"n": 1})
    log.add(record)
    log._db.execute("DROP TABLE decisions")  # the next write fails
    with pytest.raises(Exception, match="no such table"):
        bg.run(log.flush())
    log._db.executescript("CREATE TABLE decisions (request_id, at, policy, team, rule, route, deployment,"
                          " status, latency_ms, signals)")  # fmt: skip
    bg.run(log.flush())
    assert list(log.read()) == [record]
    log.close()

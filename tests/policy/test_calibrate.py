"""`gateway router calibrate`: a target in, a reviewed threshold out. Against a real SQLite ledger of
recorded decisions, the command picks the threshold, keeps the policy's comments, refuses thresholds
that break a golden case, and `gateway policy replay --ledger` confirms the share it promised."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from gateway.ledger.record import SpendRecord
from gateway.ledger.sqlite import SqliteLedgerStore
from gateway.policy.calibrate import for_quality
from tests.gateway_process import run_command

PROJECT = Path(__file__).resolve().parents[2]
CONFIG = str(PROJECT / "policies" / "deployments.yaml")

POLICY = """\
# Saver: local unless the router says the frontier is needed.
routes:
  frontier: {deployments: [gpt-4o]}
  local: {deployments: [smollm2]}
signals:
  uses_tools: {kind: feature, of: tools}
  strong_needed: {kind: learned_score}   # P(the frontier is needed)
rules:
  - name: needs-frontier
    when: {any: [{signal: uses_tools, eq: true}, {signal: strong_needed, gt: 0.8}]}
    route: frontier
default_route: local
tests:
  - name: a sure case escalates
    request: {body: {messages: [{role: user, content: "Prove it."}]}, signals: {strong_needed: 0.95}}
    expect: {rule: needs-frontier, route: frontier}
"""


def record(n: int, signals: dict[str, object], route: str) -> SpendRecord:
    return SpendRecord(
        id=f"r{n}", request_id=f"req-{n}", at=1_700_000_000.0 + n, team="search", key_id="k", policy="saver",
        route=route, rule="needs-frontier" if route == "frontier" else "default", deployment=None,
        model=None, stream=False, status=200, latency_ms=10.0, signals=signals,
    )  # fmt: skip


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """100 recorded requests of policy `saver`: 10 with tools (frontier, score never computed) and 90
    scored 0.01 … 0.90, routed by the current threshold 0.8. Returns the policy file."""
    state = tmp_path / "state"
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(state))
    records = [record(n, {"uses_tools": True}, "frontier") for n in range(10)]
    for n in range(1, 91):
        score = round(n / 100, 2)
        route = "frontier" if score > 0.8 else "local"
        records.append(record(100 + n, {"uses_tools": False, "strong_needed": score}, route))
    store = SqliteLedgerStore(state / "ledger.sqlite")
    store.insert(records)
    store.close()
    policy = tmp_path / "saver.yaml"
    policy.write_text(POLICY)
    return policy


def calibrate(policy: Path, *args: str) -> tuple[int, str, str]:
    done = run_command("router", "calibrate", str(policy), "--config", CONFIG, "--since", "all", *args)
    return done.returncode, done.stdout, done.stderr


def test_a_frontier_share_target_sets_the_threshold_and_replay_confirms_it(
    recorded: Path, tmp_path: Path
) -> None:
    output = tmp_path / "candidate" / "saver.yaml"
    code, out, err = calibrate(recorded, "--max-frontier-share", "0.3", "--output", str(output))
    assert code == 0, err
    # 10 tool calls always go; 20 scored ones fit: those above 0.70.
    assert "strong_needed gt 0.8 -> 0.7" in out
    assert "'frontier' share 20.0% -> 30.0%" in out
    text = output.read_text()
    assert text.startswith("# Calibrated by `gateway router calibrate`")
    assert "# Saver: local unless" in text and "# P(the frontier is needed)" in text
    assert "{signal: strong_needed, gt: 0.7}" in text
    assert recorded.read_text() == POLICY  # the live policy is untouched

    replayed = run_command(
        "policy", "replay", str(output), "--ledger", "--since", "all", "--json", "--config", CONFIG
    )
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert (report["replayed"], report["routes_after"]) == (100, {"frontier": 30, "local": 70})


def test_a_threshold_that_breaks_a_golden_case_is_refused_and_nothing_is_written(
    recorded: Path, tmp_path: Path
) -> None:
    # Only the tool calls fit in 10%: the threshold must rise above every score, past the golden 0.95.
    recorded.write_text(POLICY.replace("strong_needed: 0.95", "strong_needed: 0.9"))
    output = tmp_path / "out.yaml"
    code, _, err = calibrate(recorded, "--max-frontier-share", "0.1", "--output", str(output))
    assert code == 2
    assert "a sure case escalates" in err
    assert not output.exists()


def test_unreachable_and_unusable_targets_are_explained(recorded: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.yaml"
    code, _, err = calibrate(recorded, "--max-frontier-share", "0.05", "--output", str(output))
    assert code == 2 and "other rules send them there" in err
    code, _, err = calibrate(recorded, "--max-frontier-share", "1.5", "--output", str(output))
    assert code == 2 and "between 0 and 1" in err
    code, _, err = calibrate(recorded, "--quality", "0.95", "--output", str(output))
    assert code == 2 and "--labelled" in err
    two = POLICY.replace(
        "route: frontier\n",
        "route: frontier\n  - {name: again, when: {signal: strong_needed, gte: 0.5}, route: frontier}\n",
        1,
    )
    recorded.write_text(two)
    code, _, err = calibrate(recorded, "--max-frontier-share", "0.3", "--output", str(output))
    assert code == 2 and "found 2" in err
    assert not output.exists()


def test_a_quality_target_on_a_labelled_sample_writes_a_threshold(recorded: Path, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    rows = [
        {"prompt": "Prove that the square root of two is irrational.", "weak": 0, "strong": 1},
        {"prompt": "Derive the closed form of the sum of the first n cubes.", "weak": 0, "strong": 1},
        {"prompt": "Hello! How are you?", "weak": 1, "strong": 1},
        {"prompt": "Suggest a name for a cat.", "weak": 1, "strong": 1},
    ]
    labelled.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    output = tmp_path / "out.yaml"
    code, out, err = calibrate(
        recorded, "--quality", "0.95", "--labelled", str(labelled), "--output", str(output)
    )
    assert code == 0, err
    assert "labelled sample: 4 prompts keep 100.0% of the frontier's quality" in out
    assert "gt:" in output.read_text()


# Scores, weak and strong outcomes: the two 0.8s tie and must go the same way.
SCORES, WEAK, STRONG = [0.9, 0.8, 0.8, 0.3], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]


def test_for_quality_sends_the_fewest_prompts_that_reach_the_target_keeping_ties_together() -> None:
    # None sent: 0.5; the 0.9 alone: 0.75; both 0.8s too (ties go together): 1.0.
    assert for_quality(SCORES, WEAK, STRONG, 0.95, "gt") == (0.3, 1.0)
    assert for_quality(SCORES, WEAK, STRONG, 0.95, "gte") == (0.8, 1.0)
    assert for_quality(SCORES, WEAK, STRONG, 0.7, "gt") == (0.8, 0.75)
    # Nothing needs sending: a threshold no score passes.
    assert for_quality(SCORES, WEAK, STRONG, 0.5, "gt") == (0.9, 0.5)
    assert for_quality(SCORES, WEAK, STRONG, 0.5, "gte") == (0.9001, 0.5)

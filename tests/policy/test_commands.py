"""`gateway policy …` as an admin runs it, on the shipped policies and on broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.commands import policy_json_schema

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "policies" / "deployments.yaml")


def test_the_committed_json_schema_is_current() -> None:
    assert (REPO / "policies" / "schema.json").read_text() == policy_json_schema(), (
        "run `gateway policy schema` and commit policies/schema.json"
    )


def test_validate_and_test_the_default_policy(capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(REPO / "policies" / "default.yaml")
    assert main(["policy", "validate", policy, "--config", CONFIG]) == 0
    assert "ok (3 rules" in capsys.readouterr().out
    assert main(["policy", "test", policy, "--config", CONFIG]) == 0
    assert capsys.readouterr().out.count(": ok ") == 4


def test_validate_reports_every_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "routes:\n  frontier: {deployments: [gpt-4o]}\ndefault_route: frontier\n"
        "rules:\n  - {name: r, route: nowhere, when: {signal: ghost, eq: 1}}\n"
    )
    assert main(["policy", "validate", str(broken), "--config", CONFIG]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:5: rules.0.route: unknown route 'nowhere'" in err
    assert f"{broken}:5: rules.0.when: unknown signal 'ghost'" in err


def test_failing_golden_cases_are_listed_one_by_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "routes:\n  frontier: {deployments: [gpt-4o]}\n  local: {deployments: [smollm2]}\n"
        "default_route: frontier\ntests:\n"
        "  - {name: right, request: {body: {messages: []}}, expect: {rule: default, route: frontier}}\n"
        "  - {name: wrong, request: {body: {messages: []}}, expect: {rule: default, route: local}}\n"
    )
    assert main(["policy", "test", str(policy), "--config", CONFIG]) == 1
    out = capsys.readouterr().out
    assert "ok   right" in out and "FAIL wrong" in out
    assert main(["policy", "validate", str(policy), "--config", CONFIG]) == 1


def test_explain_shows_signals_and_every_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"body": {"messages": [{"role": "user", "content": "Hi!"}]}, "team": "ads"})
    )
    assert (
        main(["policy", "explain", str(REPO / "policies" / "default.yaml"), str(request), "--config", CONFIG])
        == 0
    )
    explained = json.loads(capsys.readouterr().out)
    assert (explained["rule"], explained["route"]) == ("short-questions-local", "local")
    assert [r["rule"] for r in explained["rules"]] == [
        "code-and-tools-to-frontier",
        "long-prompts-to-frontier",
        "short-questions-local",
    ]
    assert explained["signals"]["prompt_tokens"] == 5
    assert explained["overrides"] == {"max_tokens": 512}


SHIPPED = sorted(p for p in (REPO / "policies").glob("*.yaml") if p.name != "deployments.yaml")


@pytest.mark.parametrize("policy", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_policy_loads_and_passes_its_golden_cases(policy: Path) -> None:
    assert len(SHIPPED) >= 4
    assert main(["policy", "validate", str(policy), "--config", CONFIG]) == 0


def test_policy_bench_reports_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"question {i} " * i}]})
            for i in range(1, 30)
        )
    )
    out = tmp_path / "bench.json"
    policy = str(REPO / "policies" / "default.yaml")
    assert (
        main(["policy", "bench", policy, str(data), "--rounds", "1", "--json", str(out), "--config", CONFIG])
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["decisions"] == 29
    assert 0 < figures["decide_p50_ms"] <= figures["decide_p99_ms"] <= figures["decide_max_ms"]
    assert figures["large_policy_compile_s"] > 0
    assert "signals + decision p99" in capsys.readouterr().out


def test_policy_bench_reports_a_broken_policy_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: [a, b?\n")
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert main(["policy", "bench", str(broken), str(data), "--config", CONFIG]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:1:" in err and "Traceback" not in err


def test_explain_with_a_missing_request_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = str(REPO / "policies" / "default.yaml")
    assert main(["policy", "explain", policy, str(tmp_path / "nope.json"), "--config", CONFIG]) == 1
    err = capsys.readouterr().err
    assert "nope.json" in err and "Traceback" not in err

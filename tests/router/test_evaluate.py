"""`gateway eval routing` end to end on a small sample: the table, the JSON and the PNG."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.gateway_process import run_command

# Maths questions the weak model gets wrong, chit-chat it gets right: a router can learn that.
HARD = [
    f"Prove that the sum of the first {n} odd numbers is a perfect square, step by step." for n in range(20)
]
EASY = [f"Say hello to my friend number {n} in a cheerful way." for n in range(20)]


def test_eval_routing_beats_random_on_a_learnable_sample(tmp_path: Path) -> None:
    data = tmp_path / "outcomes.jsonl"
    rows = [{"prompt": p, "weak": 0, "strong": 1} for p in HARD]
    rows += [{"prompt": p, "weak": 1, "strong": 1} for p in EASY]
    data.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    report, plot = tmp_path / "routing.json", tmp_path / "routing.png"
    done = run_command("eval", "routing", str(data), "--json", str(report), "--png", str(plot))
    assert done.returncode == 0, done.stderr
    assert "outcomes" in done.stdout
    result = orjson.loads(report.read_bytes())["data"]["outcomes"]
    assert result["prompts"] == 40
    assert result["share_at_target"] <= 0.55 < result["random_share_at_target"]
    assert result["apgr"] > result["random_apgr"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_eval_routing_refuses_what_is_not_outcomes(tmp_path: Path) -> None:
    data = tmp_path / "outcomes.txt"
    data.write_text("nothing")
    done = run_command("eval", "routing", str(data))
    assert done.returncode == 2 and "expected a .jsonl or .csv" in done.stderr

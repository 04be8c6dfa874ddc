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


def write_outcomes(path: Path, hard: list[str], easy: list[str], learnable: bool = True) -> Path:
    rows = [{"prompt": p, "weak": 0 if learnable or n % 2 else 1, "strong": 1} for n, p in enumerate(hard)]
    rows += [{"prompt": p, "weak": 1 if learnable or n % 2 else 0, "strong": 1} for n, p in enumerate(easy)]
    path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    return path


def test_transfer_fits_on_one_set_and_judges_another_with_a_verdict(tmp_path: Path) -> None:
    train = write_outcomes(tmp_path / "train.jsonl", HARD, EASY)
    other_hard = [f"Prove that {n} squared minus one factors, with every step shown." for n in range(20)]
    other_easy = [f"Wish my colleague number {n} a happy birthday." for n in range(20)]
    test = write_outcomes(tmp_path / "test.jsonl", other_hard, other_easy)
    noise = write_outcomes(tmp_path / "noise.jsonl", other_hard, other_easy, learnable=False)
    report = tmp_path / "transfer.json"
    done = run_command(
        "eval", "routing", "--train", str(train), "--test", str(test), str(noise), "--json", str(report)
    )
    assert done.returncode == 0, done.stderr
    tests = {row["test"]: row for row in orjson.loads(report.read_bytes())["tests"]}
    assert tests["test"]["beats_random"] and tests["test"]["p_value"] < 0.05
    assert not tests["noise"]["beats_random"]
    assert "does NOT beat random" in done.stdout


def test_own_split_fits_on_the_first_part_and_judges_the_rest(tmp_path: Path) -> None:
    mixed = [prompt for pair in zip(HARD, EASY, strict=True) for prompt in pair]
    rows = [{"prompt": p, "weak": 0 if p in HARD else 1, "strong": 1} for p in mixed * 2]
    data = tmp_path / "own.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    report = tmp_path / "own.json"
    done = run_command("eval", "routing", str(data), "--own-split", "0.3", "--json", str(report))
    assert done.returncode == 0, done.stderr
    tests = {row["test"]: row for row in orjson.loads(report.read_bytes())["tests"]}
    assert set(tests) == {"own/logistic", "own/knn"}
    assert all(row["fitted"] == 56 and row["apgr"] > row["random_apgr"] for row in tests.values())


def test_eval_routing_takes_one_kind_of_input(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "x.jsonl", HARD, EASY)
    done = run_command("eval", "routing", str(data), "--train", str(data))
    assert done.returncode == 2 and "--train A... --test B..." in done.stderr

"""`gateway cache calibrate --train … --test …` end to end on small labelled files of two sources: it
fits the judge on one and reports on the other (per source, with intervals), writes the table, JSON,
PNG and a judge file the cache can load; and refuses half a request."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.cache.pair_judge import PairJudge
from tests.cache.test_calibrate import DIFFERENT, SAME
from tests.gateway_process import run_command

# Another kind of text: statements rather than questions.
OTHER_SAME = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Stocks fell sharply on Monday.", "Share prices dropped steeply on Monday."),
    ("The meeting was postponed until Friday.", "The meeting has been moved to Friday."),
    ("He bought a new red car.", "He purchased a new car that is red."),
]
OTHER_DIFFERENT = [
    ("The cat sat on the mat.", "The dog sat on the mat."),
    ("Stocks fell sharply on Monday.", "Stocks rose sharply on Monday."),
    ("The meeting was postponed until Friday.", "The meeting was cancelled on Friday."),
    ("He bought a new red car.", "He sold his old blue car."),
]


def write_pairs(path: Path, same: list[tuple[str, str]], different: list[tuple[str, str]]) -> Path:
    rows = [{"text_a": a, "text_b": b, "label": 1} for a, b in same]
    rows += [{"text_a": a, "text_b": b, "label": 0} for a, b in different]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
    return path


def test_calibrate_fits_on_some_sources_and_reports_on_another(tmp_path: Path) -> None:
    questions = write_pairs(tmp_path / "questions" / "pairs.jsonl", SAME, DIFFERENT)
    statements = write_pairs(tmp_path / "statements" / "pairs.jsonl", OTHER_SAME, OTHER_DIFFERENT)
    report, plot, judge = tmp_path / "report.json", tmp_path / "report.png", tmp_path / "judge.json"
    done = run_command(
        *("cache", "calibrate", "--train", f"{questions}:all", "--test", str(statements)),
        *("--max-error", "0.05", "--json", str(report), "--png", str(plot), "--output", str(judge)),
        *("--scores-dir", str(tmp_path / "scores")),
        timeout=180,
    )
    assert done.returncode in (0, 1), done.stderr
    assert "judge fitted on questions/pairs:all" in done.stdout
    assert "statements/pairs:all" in done.stdout and "wrong hits" in done.stdout
    figures = orjson.loads(report.read_bytes())
    (tested,) = figures["test"]
    assert tested["source"] == "statements/pairs:all" and tested["pairs"] == 8
    compared = tested["precision_at_recall_0.20"]
    assert set(compared) == {"cosine", "verifier", "judge"}
    assert all(
        0 <= compared[name]["low"] <= compared[name]["share"] <= compared[name]["high"] <= 1
        for name in compared
    )
    assert plot.stat().st_size > 10_000
    loaded = PairJudge.read(judge)
    assert loaded.trained_on == ["questions/pairs:all"] and set(loaded.thresholds) >= {"0.05", "0.1"}
    # Scored once: a second run reads the scores back (and says nothing about embedding).
    again = run_command(
        *("cache", "calibrate", "--train", f"{questions}:all", "--test", str(statements)),
        *("--scores-dir", str(tmp_path / "scores")),
        timeout=180,
    )
    assert "scoring" not in again.stderr and again.stdout.splitlines()[1:] == done.stdout.splitlines()[1:]


def test_calibrate_needs_both_train_and_test(tmp_path: Path) -> None:
    questions = write_pairs(tmp_path / "q.jsonl", SAME, DIFFERENT)
    done = run_command("cache", "calibrate", "--train", str(questions), timeout=60)
    assert done.returncode == 2 and "both --train and --test" in done.stderr

"""`gateway cache calibrate` end to end on a small labelled file: the table, the JSON and the PNG."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.gateway_process import run_command

SAME = [
    ("How can I lose weight quickly?", "What is the fastest way to lose weight?"),
    ("How do I learn Python?", "What is the best way to learn Python?"),
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How can I improve my English speaking skills?", "How do I improve my spoken English?"),
    ("Why is the sky blue?", "What makes the sky blue?"),
    ("How do I reset my Gmail password?", "How can I reset my Gmail password?"),
]
DIFFERENT = [
    ("How can I lose weight in 2 weeks?", "How can I gain weight in 2 weeks?"),
    ("How do I learn Python?", "How do I learn Java?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How can I improve my English speaking skills?", "How can I improve my French speaking skills?"),
    ("Why is the sky blue?", "Why is the sea salty?"),
    ("How do I reset my Gmail password?", "How do I delete my Gmail account?"),
]


def test_calibrate_prints_the_curve_and_recommends_a_threshold(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"text_a": a, "text_b": b, "label": 1} for a, b in SAME]
    rows += [{"text_a": a, "text_b": b, "label": 0} for a, b in DIFFERENT]
    pairs.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
    report, plot = tmp_path / "calibration.json", tmp_path / "calibration.png"
    done = run_command(
        *("cache", "calibrate", str(pairs), "--split", "all", "--target-precision", "0.95"),
        *("--json", str(report), "--png", str(plot)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "recommended: `similarity:" in done.stdout
    figures = orjson.loads(report.read_bytes())
    assert (figures["count"], figures["positives"], figures["split"]) == (12, 6, "all")
    recommended = figures["recommended"]
    assert recommended["precision"] >= 0.95 and recommended["recall"] > 0
    assert figures["verifier_curve"][0]["threshold"] >= recommended["threshold"]
    assert figures["cosine_curve"], "the plain-cosine curve is reported beside the verifier's"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_calibrate_refuses_a_file_that_is_not_pairs(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"question": "no label"}\n')
    done = run_command("cache", "calibrate", str(pairs), timeout=120)
    assert done.returncode != 0
    assert "pairs.jsonl:1" in done.stderr

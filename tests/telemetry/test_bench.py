"""Smoke test of the telemetry bench: a tiny run prints its table and writes its figures, never judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.telemetry.bench import main


def test_bench_prints_and_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "telemetry.json"
    assert main(["--iterations", "20", "--repeats", "2", "--json", str(out)]) == 0

    figures = json.loads(out.read_text())
    assert [result["case"] for result in figures["results"]] == [
        "observe(record)",
        "observe(record), extra metric reader",
        "deferred SDK histogram feed, extra metric reader",
        "request span + 3 children, tracing off",
        "request span + 3 children, span exporter",
    ]
    assert all(result["median_us"] > 0 for result in figures["results"])
    printed = capsys.readouterr().out
    assert "median µs/call" in printed and "observe(record)" in printed

"""Smoke test of `gateway bench`: a tiny run end to end, checking the figures exist, never their speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.bench.report import FIGURES
from gateway.bench.run import run_bench


@pytest.mark.timeout(120)
def test_bench_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    affinity = os.sched_getaffinity(0)
    out = tmp_path / "bench.json"

    assert run_bench(json_path=out, duration=0.3, with_litellm=False) == 0

    assert os.sched_getaffinity(0) == affinity  # the bench pins itself while it runs, then lets go
    report = json.loads(out.read_text())
    assert set(report["figures"]) == {"direct", "floor", "gateway"}
    for column in report["figures"].values():
        assert set(FIGURES) <= set(column)
    gateway = report["figures"]["gateway"]
    for key in FIGURES:
        assert gateway[key] is not None, key
    assert report["phases"]["gateway"]["throughput"]["requests"] > 0
    assert report["phases"]["gateway"]["streams"]["requests"] > 0
    assert gateway["errors"] == 0
    assert gateway["streams_missing_usage"] == 0
    assert gateway["startup_s"] > 0
    assert report["figures"]["direct"]["errors"] == 0
    assert report["figures"]["floor"]["errors"] == 0
    assert report["litellm"] == "skipped (--no-litellm)"
    assert report["machine"]["python"] and report["duration_s"] == 0.3
    printed = capsys.readouterr().out
    assert report["table"] in printed
    assert "gateway" in printed and "target" in printed

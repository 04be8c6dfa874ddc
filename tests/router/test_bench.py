"""`gateway router bench` end to end on a few prompts: a table on stdout and figures in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.gateway_process import run_command


def test_the_router_benchmark_prints_a_table_and_writes_its_figures(tmp_path: Path) -> None:
    data = tmp_path / "outcomes.jsonl"
    prompts = ["What is two plus two?", "Prove Fermat's little theorem.", "Name a colour."]
    data.write_bytes(b"\n".join(orjson.dumps({"prompt": p, "weak": 1, "strong": 1}) for p in prompts))
    figures = tmp_path / "bench.json"
    done = run_command("router", "bench", str(data), "--rounds", "3", "--json", str(figures))
    assert done.returncode == 0, done.stderr
    assert "router signal (beyond embedding)" in done.stdout
    written = json.loads(figures.read_text())
    assert written["prompts"] == 3
    assert 0 < written["signal_p50_ms"] <= written["signal_p99_ms"] <= written["signal_max_ms"]
    assert written["embedding_p50_ms"] > written["signal_p50_ms"]

"""Smoke tests of `gateway bench`: tiny runs end to end, checking the figures exist, never their speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest

from gateway.bench.depth import LABELS
from gateway.bench.depth_rows import DEPTH_ROWS
from gateway.bench.report import DEPTH_FIGURES, FIGURES
from gateway.bench.run import run_bench
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EMBEDDER = ROOT / Settings.model_fields["embedder_path"].default
# Questions of many kinds, as the depth rows send them (ShareGPT's format); fewer than the rows send in
# a run, so the rows that never repeat a prompt go round them in several passes.
QUESTIONS = [
    "What is the capital of Australia?",
    "How do I reverse a list in Python?",
    "Explain how vaccines train the immune system.",
    "Write a haiku about autumn rain.",
    "Why is the sky blue during the day?",
    "What are the health benefits of green tea?",
    "How does a mortgage interest rate affect monthly payments?",
    "Summarise the plot of Hamlet.",
    "What is the difference between TCP and UDP?",
    "Suggest a name for a bakery in Paris.",
    "How many moons does Jupiter have?",
    "What causes inflation in an economy?",
    "Translate 'good morning' into Japanese.",
    "How do I bake sourdough bread at home?",
    "What is a black hole made of?",
    "Give me three tips for a job interview.",
    "How does photosynthesis work in plants?",
    "What is the best way to learn the guitar?",
    "Explain recursion to a ten year old.",
    "Which planets have rings?",
    "How do I remove a red wine stain from carpet?",
    "What year did the Berlin Wall fall?",
    "What is the Pythagorean theorem?",
    "Recommend a science fiction novel for a long flight.",
    "How do electric cars charge so quickly?",
    "What does a product manager do all day?",
    "Why do cats purr when they are happy?",
    "How can I improve my sleep schedule?",
    "What is machine learning in simple words?",
    "Plan a three day trip to Rome.",
]


def _prompts(path: Path) -> Path:
    conversations = [{"conversations": [{"from": "human", "value": q}]} for q in QUESTIONS]
    path.write_bytes(orjson.dumps(conversations))
    return path


@pytest.mark.timeout(120)
def test_bench_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    affinity = os.sched_getaffinity(0)
    out = tmp_path / "bench.json"

    assert run_bench(json_path=out, duration=0.3, with_litellm=False, tables="main") == 0

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
    assert report["depth"] is None
    assert report["gateway"]["package"] == str(ROOT / "gateway")  # this checkout's, as installed
    printed = capsys.readouterr().out
    assert report["table"] in printed
    assert "gateway" in printed and "target" in printed
    assert "Depth" not in printed


@pytest.mark.timeout(300)
def test_depth_table_measures_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert EMBEDDER.is_file(), f"{EMBEDDER} is missing: run `make embedder` (make test builds it)"
    out = tmp_path / "bench.json"

    # More entries than a flat group holds (2,048), so hits are searched in an HNSW graph.
    code = run_bench(
        json_path=out,
        duration=1.0,
        with_litellm=False,
        tables="depth",
        cache_entries=3000,
        prompts=_prompts(tmp_path / "prompts.json"),
    )

    assert code == 0
    report = json.loads(out.read_text())
    assert report["table"] is None and report["figures"] == {}
    depth = report["depth"]
    assert list(depth["rows"]) == ["floor", *DEPTH_ROWS]
    assert depth["floor_rps"] > 0
    for name, row in depth["rows"].items():
        assert row["status"] == "measured", (name, row["error"])
        assert set(DEPTH_FIGURES) <= set(row["figures"])
        assert row["figures"]["throughput_rps"] > 0, name
        assert row["figures"]["latency_p50_ms"] > 0, name
        assert row["figures"]["errors"] == 0, name
        assert row["figures"]["ratio_to_floor"] == pytest.approx(
            row["figures"]["throughput_rps"] / depth["floor_rps"], abs=1e-3
        )
    assert depth["rows"]["floor"]["figures"]["ratio_to_floor"] == pytest.approx(1.0, rel=1e-3)
    hit, miss = depth["rows"]["semantic-cache-hit"], depth["rows"]["semantic-cache-miss"]
    # The x-gateway-cache header of every answer was counted: hits are semantic, misses misses.
    assert hit["figures"]["expected_cache_share"] >= 0.9, hit["phases"]["latency"]["cache_header"]
    assert miss["figures"]["expected_cache_share"] == 1.0, miss["phases"]["throughput"]["cache_header"]
    assert hit["cache_fill"]["entries"] == 3000 and hit["cache_fill"]["real_questions"] >= len(QUESTIONS) // 2
    # More requests than prompts: the miss row went round them again, and still never hit.
    assert miss["phases"]["latency"]["requests"] + miss["phases"]["throughput"]["requests"] > len(QUESTIONS)
    assert "cache_header" not in depth["rows"]["rules"]["phases"]["throughput"]
    printed = capsys.readouterr().out
    assert depth["table"] in printed
    for name in DEPTH_ROWS:
        assert f"| {LABELS[name]} " in depth["table"]
    assert "semantic" in depth["table"] and "≥ 800 req/s" in depth["table"]
    # Its targets join the others in the misses note (met or not, the note names the run's verdict).
    verdict = report["notes"][-1]
    assert verdict == "gateway meets every target" or verdict.startswith("gateway misses: ")


@pytest.mark.timeout(120)
def test_a_depth_row_that_cannot_run_is_reported_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The gateways import from another directory (here: this checkout again, by a link), as they do
    # from an older worktree; there, a policy with a semantic signal cannot load without the embedder.
    other = tmp_path / "checkout"
    other.mkdir()
    (other / "gateway").symlink_to(ROOT / "gateway")
    out = tmp_path / "bench.json"

    code = run_bench(
        json_path=out,
        duration=0.3,
        with_litellm=False,
        tables="depth",
        depth_rows=("semantic-signal", "rules"),
        gateway_pythonpath=other,
        embedder=tmp_path / "no-such-model.onnx",
        prompts=_prompts(tmp_path / "prompts.json"),
    )

    assert code == 0  # a failed row is a finding of the run, not a failed run
    report = json.loads(out.read_text())
    assert report["gateway"] == {"pythonpath": str(other), "package": str(other / "gateway")}
    rows = report["depth"]["rows"]
    assert list(rows) == ["floor", "rules", "semantic-signal"]  # in the table's order
    assert rows["rules"]["status"] == "measured"
    failed = rows["semantic-signal"]
    assert failed["status"] == "failed"
    assert "exited during start-up" in failed["error"] and "no-such-model.onnx" in failed["error"]
    assert all(value is None for value in failed["figures"].values())
    semantic_line = next(
        line for line in report["depth"]["table"].splitlines() if "| semantic signal " in line
    )
    assert "failed" in semantic_line
    assert any(note.startswith("depth row semantic signal failed: ") for note in report["notes"])
    assert "semantic signal: not measured, the row failed" in report["notes"][-1]
    assert report["depth"]["table"] in capsys.readouterr().out


def test_bench_refuses_what_it_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_bench(None, 1.0, False, gateway_pythonpath=tmp_path) == 2
    assert "no gateway package there" in capsys.readouterr().err
    assert run_bench(None, 1.0, False, depth_rows=("everything",)) == 2
    assert "no depth row everything" in capsys.readouterr().err
    assert run_bench(None, 1.0, False, tables="depth", depth_rows=()) == 2
    assert run_bench(None, 0.0, False) == 2

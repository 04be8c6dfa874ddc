"""The soak command: its trace and prompt reading, its figures, and a few seconds of it end to end."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.bench.soak import main
from gateway.bench.soak_client import NO_DONE, NO_USAGE, Outcome, verdict
from gateway.bench.soak_report import Window, summarise
from gateway.bench.trace import (
    CHARS_PER_TOKEN,
    PROMPT_SEPARATOR,
    TraceError,
    chat_body,
    read_prompts,
    read_trace,
    schedule,
    sized_prompt,
)

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _write_trace(path: Path, rows: list[tuple[str, int, int]]) -> Path:
    path.write_text(
        HEADER + "".join(f"{stamp},{context},{generated}\n" for stamp, context, generated in rows)
    )
    return path


def _write_prompts(path: Path) -> Path:
    conversations = [
        {
            "id": "a",
            "conversations": [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "Hi"}],
        },
        {"id": "b", "conversations": [{"from": "human", "value": ""}]},  # no usable prompt: skipped
        {
            "id": "c",
            "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "Soak tests?"}],
        },
    ]
    path.write_bytes(orjson.dumps(conversations))
    return path


def test_read_trace_sorts_and_offsets_from_the_first_arrival(tmp_path: Path) -> None:
    trace = read_trace(
        _write_trace(
            tmp_path / "trace.csv",
            [
                ("2023-11-16 18:15:47.2500000", 30, 3),
                ("2023-11-16 18:15:45.0000000", 10, 1),
                ("2023-11-16 18:15:45.5000001", 20, 2),
            ],
        )
    )
    assert [(round(r.offset_s, 6), r.context_tokens, r.generated_tokens) for r in trace.rows] == [
        (0.0, 10, 1),
        (0.5, 20, 2),
        (2.25, 30, 3),
    ]
    assert trace.span_s == 2.25
    assert trace.lap_s == pytest.approx(2.25 + 2.25 / 2)  # span plus one mean gap
    assert trace.mean_rate == pytest.approx(3 / 3.375)


def test_read_trace_refuses_what_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=":2: not a trace row"):
        read_trace(_write_trace(tmp_path / "bad.csv", [("yesterday", 1, 1)]))
    with pytest.raises(TraceError, match="no rows"):
        read_trace(_write_trace(tmp_path / "empty.csv", []))
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.csv")


def test_read_prompts_takes_the_first_human_turn(tmp_path: Path) -> None:
    assert read_prompts(_write_prompts(tmp_path / "prompts.json")) == ["Hello there", "Soak tests?"]
    (tmp_path / "none.json").write_text('[{"id": "x", "conversations": [{"from": "gpt", "value": "y"}]}]')
    with pytest.raises(TraceError, match="no conversation"):
        read_prompts(tmp_path / "none.json")


def test_sized_prompt_cuts_or_repeats_to_four_characters_a_token() -> None:
    assert CHARS_PER_TOKEN == 4
    assert sized_prompt("abcdefghij", 2) == "abcdefgh"
    grown = sized_prompt("abc", 5)
    assert len(grown) == 20
    assert grown == PROMPT_SEPARATOR.join(["abc"] * 5)[:20]
    assert sized_prompt("abc", 0) == "abc\n"  # at least one token
    for tokens in range(1, 40):
        for text in ("x", "ab", "a longer prompt of some words"):
            assert len(sized_prompt(text, tokens)) == tokens * CHARS_PER_TOKEN


def test_schedule_applies_the_speedup_and_loops_over_the_trace(tmp_path: Path) -> None:
    trace = read_trace(
        _write_trace(
            tmp_path / "trace.csv",
            [("2023-11-16 18:00:00", 1, 7), ("2023-11-16 18:00:01", 2, 8), ("2023-11-16 18:00:03", 3, 9)],
        )
    )
    # Span 3 s, mean gap 1.5 s: the second lap starts 4.5 s after the first; at 2x, 2.25 s.
    items = list(schedule(trace, ["p", "q"], speedup=2, duration_s=3.0))
    assert [item.at_s for item in items] == [0.0, 0.5, 1.5, 2.25, 2.75]
    assert [item.row.generated_tokens for item in items] == [7, 8, 9, 7, 8]
    assert [item.index for item in items] == [0, 1, 2, 3, 4]
    assert [item.stream for item in items] == [False, True, False, True, False]
    assert [item.prompt for item in items] == [
        "p\n\np",
        "q\n\nq\n\nq\n",
        "p\n\np\n\np\n\np\n\n",
        "q\n\nq",
        "p\n\np\n\np\n",
    ]
    assert [item.prompt[0] for item in items] == ["p", "q", "p", "q", "p"]  # prompts cycle with the index
    body = orjson.loads(chat_body("frontier", items[1]))
    assert (
        body["max_tokens"] == 8
        and body["stream"] is True
        and body["stream_options"] == {"include_usage": True}
    )
    assert body["messages"] == [{"role": "user", "content": items[1].prompt}]
    assert "stream" not in orjson.loads(chat_body("frontier", items[0]))
    with pytest.raises(ValueError, match="speedup"):
        next(schedule(trace, ["p"], speedup=0, duration_s=1))


def test_verdict_checks_status_done_and_usage() -> None:
    usage = b'{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}'
    assert verdict(200, usage, stream=False) == (None, 5)
    assert verdict(200, b'{"choices":[]}', stream=False) == (NO_USAGE, 0)
    assert verdict(502, usage, stream=False) == ("HTTP 502", 0)
    chunk = b'data: {"choices":[],"usage":{"completion_tokens":4}}\n\n'
    assert verdict(200, b'data: {"choices":[]}\n\n' + chunk + b"data: [DONE]\n\n", stream=True) == (None, 4)
    assert verdict(200, chunk, stream=True) == (NO_DONE, 0)
    assert verdict(200, b'data: {"choices":[]}\n\ndata: [DONE]\n\n', stream=True) == (NO_USAGE, 0)


def _window(start: float, end: float, rss_mb: float, errors: int = 0) -> Window:
    window = Window(start, end, rss_bytes=int(rss_mb * 2**20))
    for _ in range(errors):
        window.add(Outcome(0, 0, None, 0, "HTTP 500"))
    window.add(Outcome(1_000, 2_000_000, 0.25, 10, None))
    window.sent = 1 + errors
    return window


def test_summary_measures_rss_growth_from_the_end_of_the_warm_up() -> None:
    # 10 s windows over 200 s, warm-up 20 s: 100 MB after it, then up to 108 MB in the last minute.
    rss = [90, 100, 100, 101, 102, 103, 104, 104, 105, 105, 106, 106, 106, 107, 107, 108, 107, 107, 107, 107]
    windows = [_window(10 * i, 10 * (i + 1), mb, errors=1 if i == 5 else 0) for i, mb in enumerate(rss)]
    values = summarise(windows, warmup_s=20)
    assert values["rss_warm_mb"] == pytest.approx(100)
    assert values["rss_tail_max_mb"] == pytest.approx(108)
    assert values["rss_end_mb"] == pytest.approx(107)
    assert values["rss_growth_pct"] == pytest.approx(8.0)
    assert values["errors"] == 1 and values["errors_by_kind"] == "HTTP 500: 1"
    assert values["requests_sent"] == 21 and values["requests_completed"] == 20
    assert values["throughput_rps"] == pytest.approx(18 / 180)
    assert values["latency_p99_ms"] == pytest.approx(2.0) and values["overhead_p50_ms"] == pytest.approx(0.25)


@pytest.mark.timeout(60)
def test_soak_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 10 arrivals 0.1 s apart: a 1 s lap, so 20 requests/s at 2x and exactly 60 in 3 s.
    rows = [(f"2023-11-16 18:15:46.{i}000000", 40 + 10 * i, 5 + i) for i in range(10)]
    trace = _write_trace(tmp_path / "trace.csv", rows)
    prompts = _write_prompts(tmp_path / "prompts.json")
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    affinity = os.sched_getaffinity(0)
    argv = ["--trace", str(trace), "--prompts", str(prompts), "--speedup", "2", "--duration", "3"]
    argv += ["--warmup", "1", "--window", "1", "--json", str(out), "--png", str(png)]

    assert main(argv) == 0

    assert os.sched_getaffinity(0) == affinity  # pinned to the client core while running, then let go
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert figures["errors"] == 0, figures["errors_by_kind"]
    assert figures["requests_sent"] == 60
    assert figures["requests_completed"] == 60
    windows = report["windows"]
    assert [w["end_s"] for w in windows] == [1.0, 2.0, 3.0]
    assert sum(w["sent"] for w in windows) == 60
    # Every answer had the trace's size: max_tokens = GeneratedTokens, and the fake honours it.
    assert sum(w["completion_tokens"] for w in windows) == 6 * sum(5 + i for i in range(10))
    assert figures["overhead_p50_ms"] is not None and figures["overhead_p50_ms"] > 0
    assert figures["rss_warm_mb"] > 0 and figures["rss_growth_pct"] is not None
    assert report["workload"]["laps_over_trace"] == 6
    assert report["checks"]["errors"] is True
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert report["table"] in printed.out
    assert Counter(line.count(" sent ") for line in printed.err.splitlines())[1] == 3  # a line per window

"""The overload benchmark's pieces: the capacity fake (a real server on loopback), arrivals scaled to a
rate, the class mix, the figures and targets on synthetic results, the plot, the ledger join, the
files it writes for the gateway, and (a smoke run) a few seconds of the whole command against
admission off, the gateway as it was before admission control."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from gateway.bench.overload import (
    DEPLOYMENTS,
    FRONTIER,
    LOCAL,
    Upstream,
    capacity_per_s,
    main,
    mean_service_seconds,
    read_ledger,
    write_configuration,
)
from gateway.bench.overload_load import (
    CLASSES,
    DEFERRABLE,
    INTERACTIVE,
    MIX,
    STANDARD,
    Result,
    arrivals,
    classes,
    looped_offset,
)
from gateway.bench.overload_plot import plot
from gateway.bench.overload_report import (
    DEFERRABLE_WITHIN_S,
    OFF,
    ON,
    Check,
    LevelRun,
    checks,
    class_figures,
    run_figures,
)
from gateway.bench.soak_client import UNFINISHED
from gateway.bench.trace import chat_body, read_trace
from gateway.config import load_config
from gateway.fakes.capacity_upstream import Capacity, CapacityUpstream
from gateway.policy.schema import Policy

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
MB = 2**20


def _write_trace(path: Path, offsets: list[float], generated: int = 50) -> Path:
    lines = [
        f"2023-11-16 18:00:{offset:010.7f},{100 + i},{generated + i}\n" for i, offset in enumerate(offsets)
    ]
    path.write_text(HEADER + "".join(lines))
    return path


def _write_prompts(path: Path) -> Path:
    conversations = [{"id": "a", "conversations": [{"from": "human", "value": "How do queues behave?"}]}]
    path.write_bytes(orjson.dumps(conversations))
    return path


# ---- the capacity fake -------------------------------------------------------------------------


async def _stream(
    session: aiohttp.ClientSession, url: str, max_tokens: int, stream: bool = True
) -> dict[str, Any]:
    """One chat request: its status, Retry-After, first data event and end (s after sending), the end
    (perf_counter), and its events."""
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = None
    parts = []
    async with session.post(f"{url}/chat/completions", json=body) as response:
        async for chunk in response.content.iter_any():
            parts.append(chunk)
            if first is None and b"data:" in chunk:
                first = time.perf_counter() - sent
        ended_at = time.perf_counter()
        text = b"".join(parts)
        return {
            "status": response.status,
            "retry_after": response.headers.get("Retry-After"),
            "first": first,
            "end": ended_at - sent,
            "ended_at": ended_at,
            "events": [e for e in text.split(b"\n\n") if e.startswith(b"data: {")],
            "body": text,
        }


def _content_events(events: list[bytes]) -> int:
    return sum(b'"content":"' in event and b'"content":""' not in event for event in events)


def _usage(events: list[bytes]) -> int:
    usage = [orjson.loads(e[6:])["usage"] for e in events if b'"usage":{' in e]
    assert len(usage) == 1
    return int(usage[0]["completion_tokens"])


def test_capacity_fake_rejects_beyond_its_concurrency_and_paces_tokens() -> None:
    capacity = Capacity(concurrency=2, first_byte_s=0.2, tokens_per_s=50, max_tokens=10)
    assert capacity.service_seconds(10) == pytest.approx(0.2 + 9 / 50)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        fake = CapacityUpstream(capacity)
        url = await fake.start()
        try:
            async with aiohttp.ClientSession() as session:
                answers = await asyncio.gather(*(_stream(session, url, 50) for _ in range(5)))
                async with session.get(url.removesuffix("/v1") + "/stats") as response:
                    stats = await response.json()
                later = await _stream(session, url, 4)  # the slots are free again; a shorter answer
            return list(answers), stats, later
        finally:
            await fake.stop()

    answers, stats, later = asyncio.run(scenario())

    ok = [a for a in answers if a["status"] == 200]
    rejected = [a for a in answers if a["status"] == 429]
    assert len(ok) == 2 and len(rejected) == 3
    assert all(a["retry_after"] == "1" for a in rejected)  # ceil(0.38 s until the soonest ends)
    assert b"rate_limit_exceeded" in rejected[0]["body"]
    for answer in ok:
        assert 0.19 <= answer["first"] < 0.35, answer["first"]
        assert 0.37 <= answer["end"] < 0.6, answer["end"]  # 0.2 s, then 9 more tokens at 50/s
        assert _content_events(answer["events"]) == 10  # capped at max_tokens 10, one event a token
        assert _usage(answer["events"]) == 10
    assert stats["requests"] == 5 and stats["rejected"] == 3 and stats["answered"] == 2
    assert stats["most_running"] == 2 and stats["running"] == 0
    assert stats["service_seconds"] == pytest.approx(2 * 0.38, abs=0.1)
    assert later["status"] == 200 and _usage(later["events"]) == 4
    assert 0.25 <= later["end"] < 0.45  # 0.2 s + 3 tokens at 50/s


def test_capacity_fake_in_queue_mode_serves_one_at_a_time() -> None:
    capacity = Capacity(concurrency=1, first_byte_s=0.05, tokens_per_s=100, max_tokens=6, over_limit="queue")
    service = capacity.service_seconds(6)  # 0.1 s

    async def scenario() -> tuple[list[dict[str, Any]], float, int]:
        fake = CapacityUpstream(capacity)
        url = await fake.start()
        try:
            async with aiohttp.ClientSession() as session:
                await _stream(session, url, 1)  # the connection pool warmed: the three start together
                started = time.perf_counter()
                answers = await asyncio.gather(
                    _stream(session, url, 6, stream=False), _stream(session, url, 6), _stream(session, url, 6)
                )
            return list(answers), started, fake.stats.most_running
        finally:
            await fake.stop()

    answers, started, most = asyncio.run(scenario())

    assert [a["status"] for a in answers] == [200, 200, 200]
    assert most == 1
    assert orjson.loads(answers[0]["body"])["usage"]["completion_tokens"] == 6  # not streamed, same pace
    assert all(_usage(a["events"]) == 6 for a in answers[1:])
    # One after the other: they end a service time apart, the last after three of them.
    ends = sorted(a["ended_at"] - started for a in answers)
    assert ends[0] >= service - 0.01
    assert ends[1] - ends[0] == pytest.approx(service, abs=0.04)
    assert ends[2] - ends[1] == pytest.approx(service, abs=0.04)


# ---- arrivals and classes ----------------------------------------------------------------------


def test_arrivals_hit_the_rate_and_keep_the_trace_gaps_in_proportion(tmp_path: Path) -> None:
    offsets = [0.0, 0.5, 0.6, 2.0, 2.1, 2.2, 5.0, 7.5, 7.6, 9.0]
    trace = read_trace(_write_trace(tmp_path / "trace.csv", offsets))
    prompts = ["p"]

    level = arrivals(trace, prompts, rate_per_s=3.0, seconds=2.0, seed=1, max_tokens=52)

    assert len(level) == 6  # 3/s for 2 s
    assert level[0].at_s == 0.0 and all(a.at_s < 2.0 for a in level)
    # Arrival 6 of the trace (5.0 s) lands on 2 s: every offset is scaled by 2/5.
    assert [a.at_s for a in level] == pytest.approx([o * 2 / 5 for o in offsets[:6]])
    assert [a.index for a in level] == list(range(6))
    assert [a.item.row.generated_tokens for a in level] == [50, 51, 52, 52, 52, 52]  # capped at 52
    body = orjson.loads(chat_body("auto", level[0].item))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50 and body["model"] == "auto"

    # Faster than the trace itself: it loops, and the count still matches the rate.
    fast = arrivals(trace, prompts, rate_per_s=40.0, seconds=1.0, seed=1, max_tokens=52)
    assert len(fast) == 40 and max(a.at_s for a in fast) < 1.0
    assert looped_offset(trace, 10) == pytest.approx(trace.lap_s)
    assert fast[10].at_s == pytest.approx(trace.lap_s * 1.0 / looped_offset(trace, 40))


def test_arrivals_on_the_real_trace_match_the_rate_at_every_level(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2] / "../shared/data/traces/AzureLLMInferenceTrace_conv.csv"
    if not path.exists():
        pytest.skip(f"no trace at {path}")
    trace = read_trace(path)
    frontier = Capacity(4, 0.4, 50, 200)
    capacity = capacity_per_s(frontier, trace)
    assert capacity == pytest.approx(4 / mean_service_seconds(frontier, trace))
    assert 0.5 < capacity < 3  # ~3 s per answer of at most 200 tokens, 4 at once
    for level in (1, 3, 10):
        planned = arrivals(trace, ["p"], level * capacity, 60.0, seed=0, max_tokens=200)
        assert len(planned) == round(level * capacity * 60)
        assert max(a.at_s for a in planned) < 60.0
        # Spread over the window (the trace is bursty: not evenly), not bunched at one end.
        assert 0.1 < sum(a.at_s < 30 for a in planned) / len(planned) < 0.9


def test_classes_follow_the_mix_and_the_seed() -> None:
    drawn = classes(20_000, seed=7)
    counts = Counter(drawn)
    for name, share in MIX:
        assert counts[name] / len(drawn) == pytest.approx(share, abs=0.015)
    assert drawn == classes(20_000, seed=7)
    assert drawn != classes(20_000, seed=8)
    assert set(CLASSES) == {INTERACTIVE, STANDARD, DEFERRABLE}


# ---- figures and targets -----------------------------------------------------------------------


def _ok(
    index: int, priority: str, first_ms: float, *, verdict: str | None = None, end: float = 1.0
) -> Result:
    result = Result(
        index, priority, f"r{index}", 0.0, 0.0, status=200, first_byte_ms=first_ms, finished_s=end
    )
    result.admission = (
        None if verdict is None else f"{verdict}: frontier queue 4.2 s over its 1.5 s objective"
    )
    result.cost_usd, result.energy_wh, result.ledger_records = 0.002, 0.05, 1
    return result


def _failed(
    index: int, priority: str, status: int | None, *, code: str | None = None, retry: bool = True
) -> Result:
    result = Result(index, priority, f"r{index}", 0.0, 0.0, status=status, finished_s=1.0)
    result.error = UNFINISHED if status is None else f"HTTP {status}"
    result.error_code = code
    result.retry_after = "2" if retry else None
    return result


def test_class_figures_percentiles_and_outcomes() -> None:
    results = [_ok(i, INTERACTIVE, float(ms)) for i, ms in enumerate(range(100, 1100, 10))]  # 100 answers
    results += [
        _failed(200, INTERACTIVE, 429, code="load_shed"),  # the gateway shed it: not an error
        _failed(201, INTERACTIVE, 503, code="capacity_exceeded", retry=False),
        _failed(202, INTERACTIVE, 429, code="rate_limit_exceeded"),  # the frontier's own 429: an error
        _failed(203, INTERACTIVE, None),
        _ok(204, INTERACTIVE, 5000.0, verdict="downgraded", end=12.0),
        _ok(205, INTERACTIVE, 9000.0, verdict="deferred", end=70.5),
    ]
    results[0].admission = "shed: nothing"  # a header verdict on a 200 does not make it shed

    figures = class_figures(results, burst_s=60.0)

    assert figures["count"] == 106 and figures["answered"] == 102
    # Nearest rank over the 102 answered first bytes, sorted: 100..1090 ms, 5000, 9000.
    assert figures["first_byte_p50_ms"] == 610.0
    assert figures["first_byte_p99_ms"] == 5000.0  # index int(0.99 x 102) = 100
    assert figures["shed"] == 2 and figures["shed_with_retry_after"] == 1
    assert figures["errors"] == 2 and figures["errors_by_kind"] == {"HTTP 429": 1, UNFINISHED: 1}
    assert figures["unfinished"] == 1
    assert figures["downgraded"] == 1 and figures["deferred"] == 1
    assert figures["outcomes"] == {"answered": 100, "downgraded": 1, "deferred": 1, "shed": 2, "error": 2}
    assert figures["deferred_done_after_burst_s"] == pytest.approx(10.5)
    assert figures["last_answer_after_burst_s"] == pytest.approx(10.5)
    assert class_figures([], burst_s=60.0)["first_byte_p99_ms"] is None


def _run(config: str, level: float, interactive_ms: float, **changes: Any) -> LevelRun:
    """A level of 40 interactive, 20 standard and 10 deferrable requests, all answered."""
    results = [_ok(i, INTERACTIVE, interactive_ms) for i in range(40)]
    results += [_ok(100 + i, STANDARD, 800.0) for i in range(20)]
    results += [_ok(200 + i, DEFERRABLE, 3000.0, verdict="deferred", end=60.0 + 30 * i) for i in range(10)]
    for result in results:
        result.cost_usd = changes.get("cost", 0.002)
    run = LevelRun(config, level, 1.2 * level, 60.0, results, rss_before=100 * MB)
    run.rss = [(t, int(changes.get("rss_mb", 110) * MB)) for t in range(0, 120, 10)]
    return run


def _verdicts(found: list[Check]) -> dict[str, bool | None]:
    return {check.name: check.passed for check in found}


def test_targets_pass_and_fail_on_synthetic_runs() -> None:
    on = [_run(ON, 1, 500.0), _run(ON, 3, 900.0, cost=0.0015), _run(ON, 10, 900.0, rss_mb=120)]
    off = [_run(OFF, 1, 500.0), _run(OFF, 3, 4000.0), _run(OFF, 10, 9000.0)]

    passing = _verdicts(checks([run_figures(run) for run in [*on, *off]], ON))

    assert passing == {
        "3x interactive first-byte p99": True,
        "3x interactive errors": True,
        "3x standard errors": True,
        "3x deferrable answered in time": True,
        "3x cost per answered request": True,
        "10x gateway RSS bounded": True,
    }
    assert _verdicts(checks([run_figures(run) for run in [*on, *off]], OFF)) == {
        "3x interactive first-byte p99": False,  # 4000 > 2 x 500
        "3x interactive errors": True,
        "3x standard errors": True,
        "3x deferrable answered in time": True,
        "3x cost per answered request": None,  # compared with itself: not a verdict
        "10x gateway RSS bounded": True,
    }

    worse = _run(ON, 3, 1001.0, cost=0.0021)
    worse.results[0] = _failed(0, INTERACTIVE, 502)
    worse.results[40] = _failed(100, STANDARD, 500)  # 1 of 20: 5 %
    worse.results[-1].finished_s = 60.0 + DEFERRABLE_WITHIN_S + 1
    heavy = _run(ON, 10, 900.0, rss_mb=126)
    failing = _verdicts(checks([run_figures(run) for run in [on[0], worse, heavy, *off]], ON))

    assert failing == dict.fromkeys(passing, False)
    one_unanswered = _run(ON, 3, 900.0)
    one_unanswered.results[-1] = _failed(209, DEFERRABLE, None)
    assert _verdicts(checks([run_figures(one_unanswered)], ON))["3x deferrable answered in time"] is False
    # Without a lower level, the 10x or admission-off runs, those targets cannot be judged.
    alone = _verdicts(checks([run_figures(on[1])], ON))
    assert alone["3x interactive first-byte p99"] is None
    assert alone["3x cost per answered request"] is None and alone["10x gateway RSS bounded"] is None
    assert alone["3x interactive errors"] is True


def test_run_figures_cost_energy_and_memory() -> None:
    run = _run(ON, 3, 900.0)
    run.results[0] = _failed(0, INTERACTIVE, 429, code="load_shed")
    run.results[1].energy_wh = None

    figures = run_figures(run)

    assert figures["sent"] == 70 and figures["answered"] == 69 and figures["shed"] == 1
    assert figures["cost_usd"] == pytest.approx(69 * 0.002)
    assert figures["cost_per_answered_usd"] == pytest.approx(0.002)
    assert figures["energy_wh"] == pytest.approx(68 * 0.05)
    assert figures["rss_before_mb"] == 100 and figures["rss_peak_mb"] == 110
    assert figures["rss_growth_pct"] == pytest.approx(10.0)
    assert figures["classes"][DEFERRABLE]["deferred"] == 10
    assert figures["classes"][DEFERRABLE]["last_answer_after_burst_s"] == pytest.approx(270.0)


def test_plot_is_written(tmp_path: Path) -> None:
    runs = [_run(config, level, 500.0 * level) for level in (1, 3, 10) for config in (ON, OFF)]
    runs[-1].results[0] = _failed(0, INTERACTIVE, 429, code="load_shed")
    png = tmp_path / "deeper" / "overload.png"

    plot(png, [run_figures(run) for run in runs], "Overload: synthetic")

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ---- what the benchmark writes and reads -------------------------------------------------------


def test_read_ledger_sums_by_request_and_tolerates_no_energy_column(tmp_path: Path) -> None:
    for energy in (False, True):
        path = tmp_path / f"ledger-{energy}.sqlite"
        with sqlite3.connect(path) as db:
            extra = ", energy_wh REAL" if energy else ""
            db.execute(f"CREATE TABLE ledger (id TEXT, request_id TEXT, at REAL, cost_usd REAL{extra})")
            rows: list[tuple[str, str, float, float | None]] = [
                ("a", "overload-on-1x-0", 1.0, 0.5),
                ("b", "overload-on-1x-0", 2.0, 0.25),
            ]
            rows += [("c", "overload-on-1x-1", 3.0, None), ("d", "warm-up", 4.0, 9.0)]
            for row in rows:
                values = (*row, 0.1) if energy else row
                db.execute(f"INSERT INTO ledger VALUES ({', '.join('?' * len(values))})", values)
        found, has_energy = read_ledger(path, "overload-on-")
        assert has_energy is energy
        assert set(found) == {"overload-on-1x-0", "overload-on-1x-1"}
        assert found["overload-on-1x-0"].cost_usd == pytest.approx(0.75)
        assert found["overload-on-1x-0"].records == 2
        assert found["overload-on-1x-1"].cost_usd is None
        assert found["overload-on-1x-0"].energy_wh == (pytest.approx(0.2) if energy else None)


def test_the_configurations_it_writes(tmp_path: Path) -> None:
    frontier, local = Capacity(4, 0.4, 50, 200), Capacity(1, 0.1, 30, 100, "queue")
    upstreams = {
        FRONTIER: Upstream(FRONTIER, frontier, "http://127.0.0.1:1/v1", None),  # type: ignore[arg-type]
        LOCAL: Upstream(LOCAL, local, "http://127.0.0.1:2/v1", None),  # type: ignore[arg-type]
    }
    for config in (ON, OFF):
        (tmp_path / config).mkdir()
        path = write_configuration(tmp_path / config, config, upstreams, 1.5, energy=False)
        deployments = yaml.safe_load(path.read_text())["deployments"]
        policy = yaml.safe_load((tmp_path / config / "policy.yaml").read_text())
        gpt, small = deployments[DEPLOYMENTS[FRONTIER]], deployments[DEPLOYMENTS[LOCAL]]
        assert gpt["api_base"] == "http://127.0.0.1:1/v1" and small["api_base"] == "http://127.0.0.1:2/v1"
        assert small["price"] == {"input_per_mtok": 0, "output_per_mtok": 0}
        assert policy["default_route"] == policy["reference_route"] == FRONTIER
        assert policy["routes"][LOCAL] == {"deployments": [DEPLOYMENTS[LOCAL]]}
        if config == ON:
            assert gpt["capacity"] == {"max_concurrency": 4, "queue": 16}
            assert small["capacity"] == {"max_concurrency": 1, "queue": 8}
            assert gpt["energy"] == {"wh_per_1k_input_tokens": 0.02, "wh_per_1k_output_tokens": 0.6}
            assert policy["routes"][FRONTIER]["admission"] == {
                "first_byte_seconds": 1.5,
                "standard": {"downgrade": LOCAL},
                "deferrable": "defer",
            }
        else:
            # The gateway as it was: its own loaders take these files as they are.
            assert "capacity" not in gpt and "energy" not in gpt
            assert set(load_config(path).deployments) == set(DEPLOYMENTS.values())
            assert Policy.model_validate(policy).routes[FRONTIER].deployments == [DEPLOYMENTS[FRONTIER]]


# ---- the whole command, briefly ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_smoke_run_against_admission_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SMOKE RUN, not a measurement: 3 s of arrivals at 1x and 3x against admission off (a gateway
    without capacity or admission), fakes shrunk so answers take ~0.5 s, to show the harness works end
    to end: arrivals sent, streams read, the frontier's 429s seen, the ledger joined, files written."""
    trace = _write_trace(tmp_path / "trace.csv", [i * 0.25 for i in range(40)], generated=10)
    prompts = _write_prompts(tmp_path / "prompts.json")
    out, png = tmp_path / "overload.json", tmp_path / "overload.png"
    argv = ["--trace", str(trace), "--prompts", str(prompts), "--configs", "off", "--levels", "1,3"]
    argv += ["--seconds", "3", "--drain", "20", "--timeout", "30", "--json", str(out), "--plot", str(png)]
    argv += [
        "--frontier-first-byte-ms",
        "200",
        "--frontier-tokens-per-s",
        "100",
        "--frontier-max-tokens",
        "20",
    ]
    argv += ["--local-max-tokens", "10"]
    affinity = os.sched_getaffinity(0)

    assert main(argv) == 0

    assert os.sched_getaffinity(0) == affinity
    report = json.loads(out.read_text())
    assert report["failed"] == {}
    # Answers of 10-20 tokens (the trace's, capped): 0.2 s, then 100 tokens/s; 4 at once.
    capacity = report["workload"]["frontier_capacity_per_s"]
    mean_tokens = sum(min(10 + i, 20) for i in range(40)) / 40
    assert capacity == pytest.approx(4 / (0.2 + (mean_tokens - 1) / 100), abs=1e-3)
    one, three = report["runs"]
    assert (one["config"], one["level"], three["level"]) == (OFF, 1.0, 3.0)
    assert one["sent"] == round(capacity * 3) and three["sent"] == round(3 * capacity * 3)
    for run in (one, three):
        assert run["answered"] > 0
        assert run["answered"] + run["errors"] + run["shed"] == run["sent"]
        assert run["shed"] == 0  # no admission control: nothing is shed, the frontier's 429s are errors
        assert run["in_ledger"] == run["sent"]  # every request has its ledger record
        assert run["cost_per_answered_usd"] is not None and run["cost_per_answered_usd"] > 0
        assert run["upstreams"][FRONTIER]["most_running"] <= 4
        assert run["upstreams"][LOCAL]["requests"] == 0  # everything goes to the frontier
        assert run["rss_peak_mb"] > 0
        p99 = run["classes"][INTERACTIVE]["first_byte_p99_ms"]
        assert p99 is None or p99 >= 200  # no first byte before the fake's first token
    assert three["upstreams"][FRONTIER]["rejected"] > 0  # 3x its capacity meets its rate limit
    rows = report["requests"]["off 3x"]
    assert Counter(row["priority"] for row in rows).keys() <= set(CLASSES)
    assert all(row["request_id"].startswith("overload-off-3x-") for row in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert report["class_table"] in printed.out and report["run_table"] in printed.out
    assert all(line in printed.out for line in report["check_lines"])
    assert any(line.startswith(("PASS", "FAIL")) for line in report["check_lines"])
    assert "admission off, 3x" in printed.err  # the progress line

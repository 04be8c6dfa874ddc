"""`gateway eval cascade` end to end on a small sample: a check that reads the local answer can see what
the prompt hides, and the wait escalation adds is reported."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.gateway_process import run_command

# The same question every time: only the local answer shows whether it went wrong.
QUESTION = "What is the capital of Australia?"
WRONG = "The capital of Australia is Sydney, its largest city. " * 4  # 48 words
RIGHT = "Canberra."


def test_a_check_that_reads_the_answer_beats_a_prompt_only_router(tmp_path: Path) -> None:
    data = tmp_path / "answered.jsonl"
    rows = [{"prompt": f"{QUESTION} ({n})", "weak": 0, "strong": 1, "weak_answer": WRONG} for n in range(20)]
    rows += [
        {"prompt": f"{QUESTION} ({n})", "weak": 1, "strong": 1, "weak_answer": RIGHT} for n in range(20, 40)
    ]
    data.write_bytes(b"\n".join(orjson.dumps(row) for row in rows))
    report, plot = tmp_path / "cascade.json", tmp_path / "cascade.png"
    done = run_command(
        "eval",
        "cascade",
        str(data),
        "--local-tokens-per-second",
        "10",
        "--json",
        str(report),
        "--png",
        str(plot),
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(report.read_bytes())["data"]["answered"]
    assert result["cascade"]["share_at_target"] <= 0.55 < result["router"]["share_at_target"]
    # Escalated requests are the wrong, long answers: their tokens at 10 per second.
    assert result["escalated_wait_p50_s"] > 2.0
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_data_without_the_weak_answers_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "plain.jsonl"
    data.write_bytes(orjson.dumps({"prompt": "hi", "weak": 1, "strong": 1}))
    done = run_command("eval", "cascade", str(data))
    assert done.returncode == 2 and "needs the weak model's answer" in done.stderr

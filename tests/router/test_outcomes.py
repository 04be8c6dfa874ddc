"""Reading labelled outcomes in the gateway's format and RouteLLM's, without contaminated prompts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.router.outcomes import Outcome, OutcomesError, load_outcomes

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routellm"


def test_the_gateway_format_and_a_csv_with_a_contaminated_list(tmp_path: Path) -> None:
    own = tmp_path / "own.jsonl"
    own.write_bytes(
        b'{"prompt": "hi", "weak": 0.5, "strong": 1}\n\n{"prompt": "2+2?", "weak": 1, "strong": 1}\n'
    )
    assert load_outcomes(own).outcomes == [Outcome("hi", 0.5, 1.0), Outcome("2+2?", 1.0, 1.0)]
    table = tmp_path / "set" / "answers.csv"
    table.parent.mkdir()
    table.write_text('prompt,weak-model,strong-model\n"What is\n2+2?",False,True\nLeaked?,True,True\n')
    (tmp_path / "set" / "contaminated_prompts.jsonl").write_bytes(orjson.dumps({"eval_prompt": "Leaked?"}))
    loaded = load_outcomes(table)
    assert (loaded.outcomes, loaded.excluded) == ([Outcome("What is\n2+2?", 0.0, 1.0)], 1)


def test_bad_rows_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "weak": 1}\n')
    with pytest.raises(OutcomesError, match=r"bad.jsonl:1"):
        load_outcomes(bad)


@pytest.mark.skipif(not DATA.is_dir(), reason="the shared RouteLLM data is not on this machine")
def test_the_shared_routellm_data_reads_as_the_paper_reports() -> None:
    mmlu = load_outcomes(DATA / "mmlu" / "responses")
    weak = sum(o.weak for o in mmlu.outcomes) / len(mmlu.outcomes)
    strong = sum(o.strong for o in mmlu.outcomes) / len(mmlu.outcomes)
    assert (round(weak, 3), round(strong, 3), mmlu.excluded) == (0.681, 0.806, 5)
    mt_bench = load_outcomes(DATA / "mt_bench")
    assert (len(mt_bench.outcomes), mt_bench.excluded) == (72, 8)
    assert all(0 <= o.weak <= 1 and 0 <= o.strong <= 1 for o in mt_bench.outcomes)


def test_the_weak_models_answer_is_kept_when_the_data_has_it(tmp_path: Path) -> None:
    table = tmp_path / "answered.csv"
    table.write_text("prompt,weak,strong,weak_response,strong_response\n2+2?,False,True,5,4\n")
    assert load_outcomes(table).outcomes == [Outcome("2+2?", 0.0, 1.0, "5")]
    own = tmp_path / "own.jsonl"
    own.write_bytes(b'{"prompt": "2+2?", "weak": 0, "strong": 1, "weak_answer": "5"}\n')
    assert load_outcomes(own).outcomes == [Outcome("2+2?", 0.0, 1.0, "5")]

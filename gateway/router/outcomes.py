"""Labelled per-prompt outcomes: how well a weak and a strong model answered each prompt.

The learned router is trained and judged on these. One small format is the gateway's own, so any
team's labelled traffic can be used; the RouteLLM shapes in `../shared/data/routellm/` are read as
they are:

- **JSON lines** (the gateway's format): `{"prompt": "...", "weak": 0.0-1.0, "strong": 0.0-1.0}`, one
  prompt per line; the scores are any quality measure (correct = 1, a judge's score / 10, a rating).
  An optional `"weak_answer"` holds the weak model's answer (for `gateway eval cascade`).
- **a CSV** with a `prompt` column and two score columns (`True`/`False` or numbers): the weak model's
  first, the strong model's second, as RouteLLM's MMLU and GSM8K files are laid out; a fourth column, when
  there is one, is the weak model's answer (RouteLLM's GSM8K file);
- **a directory** of such CSVs (MMLU's `responses/`), read as one set;
- **an MT-Bench directory** (`question.jsonl` and `judgements.jsonl`): each question's turns joined as
  the prompt, each model's judge scores averaged over the turns and divided by 10. The weak model is
  the one with the lower mean score.

A `contaminated_prompts.jsonl` beside the data (or one directory up) lists prompts that overlap
RouteLLM's own training data (`eval_prompt`); they are left out, as the RouteLLM paper does.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CONTAMINATED = "contaminated_prompts.jsonl"


@dataclass(frozen=True, slots=True)
class Outcome:
    prompt: str
    weak: float
    strong: float
    # What the weak model answered, when the data has it.
    weak_answer: str | None = None


@dataclass(frozen=True, slots=True)
class OutcomeSet:
    name: str
    outcomes: list[Outcome]
    # Prompts dropped because they are in a contaminated list.
    excluded: int = 0


class OutcomesError(ValueError):
    pass


def load_outcomes(path: Path) -> OutcomeSet:
    """Read any of the shapes above; the name is the file's or directory's."""
    contaminated = _contaminated(path)
    if path.is_dir():
        if (path / "question.jsonl").is_file() and (path / "judgements.jsonl").is_file():
            outcomes = _mt_bench(path, contaminated)
        else:
            files = sorted(path.glob("*.csv"))
            if not files:
                raise OutcomesError(f"{path}: no *.csv files, and not an MT-Bench directory")
            outcomes = [outcome for file in files for outcome in _csv(file)]
    elif path.suffix == ".csv":
        outcomes = _csv(path)
    elif path.suffix in (".jsonl", ".json"):
        outcomes = _jsonl(path)
    else:
        raise OutcomesError(f"{path}: expected a .jsonl or .csv file or a directory")
    kept = [o for o in outcomes if o.prompt.strip() not in contaminated]
    if not kept:
        raise OutcomesError(f"{path}: no prompts")
    name = path.parent.name if path.name in ("responses",) else path.stem
    return OutcomeSet(name, kept, len(outcomes) - len(kept))


def _score(value: str, where: str) -> float:
    text = value.strip()
    if text in ("True", "true"):
        return 1.0
    if text in ("False", "false"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise OutcomesError(f"{where}: {value!r} is not a score") from None


def _csv(path: Path) -> list[Outcome]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header is None or len(header) < 3 or header[0] != "prompt":
            raise OutcomesError(f"{path}: expected columns prompt, <weak model>, <strong model>")
        answers = len(header) >= 4
        return [
            Outcome(
                row[0],
                _score(row[1], f"{path}:{n}"),
                _score(row[2], f"{path}:{n}"),
                row[3] if answers and len(row) > 3 else None,
            )
            for n, row in enumerate(rows, 2)
            if row
        ]


def _jsonl(path: Path) -> list[Outcome]:
    outcomes = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            answer = row.get("weak_answer")
            outcomes.append(
                Outcome(
                    str(row["prompt"]),
                    float(row["weak"]),
                    float(row["strong"]),
                    None if answer is None else str(answer),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise OutcomesError(f"{path}:{n}: expected prompt, weak, strong ({error})") from None
    return outcomes


def _mt_bench(path: Path, contaminated: set[str]) -> list[Outcome]:
    """Contaminated lists name a question by its first turn: such a question keeps only that turn as its
    prompt here, so the caller's filter drops (and counts) it as it does for the other shapes."""
    questions = {}
    for row in _json_lines(path / "question.jsonl"):
        turns = row["turns"]
        assert isinstance(turns, list)
        first = str(turns[0]).strip()
        questions[row["question_id"]] = first if first in contaminated else "\n\n".join(map(str, turns))
    scores: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in _json_lines(path / "judgements.jsonl"):
        if row.get("score", -1) >= 0:
            scores[row["model"]][row["question_id"]].append(float(row["score"]) / 10)
    if len(scores) != 2:
        raise OutcomesError(f"{path}: judgements for {len(scores)} models, expected 2")
    means = {
        model: {q: sum(s) / len(s) for q, s in by_question.items()} for model, by_question in scores.items()
    }
    weak, strong = sorted(means, key=lambda model: sum(means[model].values()) / len(means[model]))
    return [
        Outcome(questions[q], means[weak][q], means[strong][q])
        for q in sorted(questions)
        if q in means[weak] and q in means[strong]
    ]


def _json_lines(path: Path) -> Iterable[dict[str, Any]]:
    for line in path.read_bytes().splitlines():
        if line.strip():
            yield orjson.loads(line)


def _contaminated(path: Path) -> set[str]:
    base = path if path.is_dir() else path.parent
    for folder in (base, base.parent):
        listed = folder / CONTAMINATED
        if listed.is_file():
            return {str(row["eval_prompt"]).strip() for row in _json_lines(listed)}
    return set()

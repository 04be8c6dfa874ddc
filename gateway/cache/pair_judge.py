"""The semantic cache's judge of a candidate hit: the probability that a new question asks what a cached
one asked, from both signals the cache has for the pair — the embeddings' cosine and the cross-encoder
verifier's probability — and three plain facts about the two texts (`pair_features`), combined by a
logistic model fitted on labelled pairs of several kinds of text
(`judge_fit.py`, `gateway cache calibrate --train … --test …`).

Why both: the verifier, tuned on Quora questions, separates questions well and other text (news
sentences, captions) worse than plain cosine does; the cosine alone is too lenient on questions that
differ in one word. Fitted together on several sources, each covers the other's blind side.

The judge's file (`models/judge.json`) also holds, for each tolerated wrong-hit rate (a rule's
`max_error`), the threshold at which the upper end of the 95 % interval of the wrong-hit rate stayed
under that rate on the calibration pairs of every source; and what was measured on the held-out pairs.
A pure function at serving time: no model, a few floating-point operations.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

FORMAT = "gateway-cache-judge/1"
DEFAULT_PATH = Path(__file__).parent / "models" / "judge.json"
# The verifier's probability is read as a log-odds clipped this far from 0 and 1.
CLIP = 1e-6


class JudgeMissing(RuntimeError):
    pass


def log_odds(probability: float) -> float:
    clipped = min(max(probability, CLIP), 1 - CLIP)
    return math.log(clipped / (1 - clipped))


# What the judge reads of a pair, in its weights' order (after the bias).
FEATURES = (
    "cosine", "verifier_log_odds", "word_overlap", "numbers_differ", "length_log_ratio",
    "questions", "questions_x_verifier_log_odds",
)  # fmt: skip
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def pair_features(query: str, candidate: str, cosine: float, verified: float) -> tuple[float, ...]:
    """The pair's features: the two model scores, and things about the texts themselves that neither
    model weighs reliably across kinds of text: how many of their words they share (Jaccard), whether
    they name different numbers, how different their lengths are, and whether both are questions (the
    verifier was tuned on questions: the judge may trust it more there)."""
    words_a, words_b = _WORD.findall(query.lower()), _WORD.findall(candidate.lower())
    set_a, set_b = set(words_a), set(words_b)
    union = len(set_a | set_b)
    overlap = len(set_a & set_b) / union if union else 1.0
    numbers_differ = float(set(_NUMBER.findall(query)) != set(_NUMBER.findall(candidate)))
    length_ratio = abs(math.log((len(words_a) + 1) / (len(words_b) + 1)))
    questions = float(_is_question(query) and _is_question(candidate))
    odds = log_odds(verified)
    return (cosine, odds, overlap, numbers_differ, length_ratio, questions, questions * odds)


_QUESTION_WORDS = frozenset((
    "what", "why", "how", "when", "where", "which", "who", "whom", "whose", "is", "are", "can", "could",
    "do", "does", "did", "should", "would", "will",
))  # fmt: skip


def _is_question(text: str) -> bool:
    stripped = text.strip()
    if stripped.endswith("?"):
        return True
    first = _WORD.match(stripped.lower())
    return first is not None and first.group(0) in _QUESTION_WORDS


@dataclass(frozen=True, slots=True)
class PairJudge:
    # Bias, then one weight per FEATURES entry.
    weights: tuple[float, ...]
    # A rule's `max_error` (as text, "0.05") → the lowest judge probability to accept at.
    thresholds: dict[str, float]
    trained_on: list[str] = field(default_factory=list)
    # What `calibrate` measured on held-out pairs, per source (for the record).
    evaluation: dict[str, Any] = field(default_factory=dict)

    def probability(self, query: str, candidate: str, cosine: float, verified: float) -> float:
        return self.of_features(pair_features(query, candidate, cosine, verified))

    def of_features(self, features: tuple[float, ...]) -> float:
        z = self.weights[0] + sum(w * x for w, x in zip(self.weights[1:], features, strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def threshold_for(self, max_error: float) -> float:
        """The threshold for the largest tabulated error rate not above `max_error` (a rate between
        two of the table's is held to the stricter); 1.0 (nothing accepted) below the table's least."""
        within = [(float(rate), threshold) for rate, threshold in self.thresholds.items()]
        within = [(rate, threshold) for rate, threshold in within if rate <= max_error + 1e-12]
        return max(within)[1] if within else 1.0

    def write(self, path: Path) -> None:
        data = {"format": FORMAT, **asdict(self)}
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    @classmethod
    def read(cls, path: Path = DEFAULT_PATH) -> PairJudge:
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as error:
            raise JudgeMissing(f"the cache judge {path} cannot be read: {error}") from None
        if data.get("format") != FORMAT:
            raise JudgeMissing(f"{path} is {data.get('format') or 'not a cache judge'}, not {FORMAT}")
        weights = tuple(float(value) for value in data["weights"])
        if len(weights) != len(FEATURES) + 1:
            raise JudgeMissing(f"{path} has {len(weights)} weights, not {len(FEATURES) + 1}: refit it")
        return cls(
            weights,
            {str(rate): float(threshold) for rate, threshold in data["thresholds"].items()},
            list(data.get("trained_on") or []),
            dict(data.get("evaluation") or {}),
        )

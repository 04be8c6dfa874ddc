"""What the learned router reads of a prompt: its MiniLM embedding (shared with the policy and the
cache) and a few cheap counts of its text that the embedding blurs — length, how many numbers and how
many distinct ones, a percent sign, line breaks. On GSM8K these cut the strong-call share needed for
95% from 68% to 62% (5-fold cross-validation, `gateway eval routing`); they cost microseconds.

The counts are standardised with the training set's mean and spread, kept in the router's artifact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURES = ("log_chars", "log_numbers", "log_distinct_numbers", "has_percent", "log_lines")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Numbers, percent signs and lines are counted in the text's first characters only, so a huge prompt
# costs no more than ~0.2 ms (every RouteLLM training prompt is shorter: MMLU's longest is 4,868).
COUNTED_CHARS = 8_000

Matrix = npt.NDArray[np.float64]


def text_features(text: str) -> list[float]:
    head = text[:COUNTED_CHARS]
    numbers = _NUMBER.findall(head)
    return [
        math.log1p(len(text)),
        math.log1p(len(numbers)),
        math.log1p(len(set(numbers))),
        1.0 if "%" in head else 0.0,
        math.log1p(head.count("\n")),
    ]


def feature_matrix(texts: Sequence[str]) -> Matrix:
    return np.array([text_features(text) for text in texts], dtype=np.float64).reshape(-1, len(FEATURES))


def design(vectors: npt.NDArray[Any], features: Matrix, mean: Matrix, spread: Matrix) -> Matrix:
    """The router's input rows: each embedding followed by its standardised text counts."""
    return np.hstack([vectors.astype(np.float64), (features - mean) / spread])


def standardiser(features: Matrix) -> tuple[Matrix, Matrix]:
    """The mean and spread to standardise with (a constant count keeps a spread of 1)."""
    spread = features.std(axis=0)
    return features.mean(axis=0), np.where(spread > 0, spread, 1.0)

"""The learned router at run time: the probability that the strong model is needed for a prompt, from
the prompt's MiniLM embedding (the one the policy and the cache already share) and a few cheap counts
of its text (`gateway.router.features`), by logistic regression. One dot product: microseconds, numpy
only.

The artifact is a small `.npz` written by `gateway router train` (`gateway.router.training`): the
weights, the bias, the text counts' mean and spread, a format tag and what it was trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.router.artifact import DEFAULT_PATH as DEFAULT_PATH
from gateway.router.artifact import FORMAT as FORMAT
from gateway.router.artifact import RouterMissing as RouterMissing
from gateway.router.features import FEATURES, text_features


class RouterModel:
    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        if not path.is_file():
            raise RouterMissing(f"router model {path} not found: run `gateway router train DATA...`")
        try:
            with np.load(path, allow_pickle=False) as saved:
                found = str(saved["format"])
                if found != FORMAT:
                    raise RouterMissing(f"{path} is {found}, not {FORMAT}: retrain it")
                weights = saved["weights"].astype(np.float32)
                self.bias = float(saved["bias"])
                mean, spread = saved["feature_mean"], saved["feature_spread"]
                self.trained_on = str(saved["trained_on"])
                self.prompts = int(saved["prompts"])
        except (OSError, KeyError, ValueError) as error:
            raise RouterMissing(f"{path} is not a router model: {error}") from None
        counted = len(FEATURES)
        self.embedding_weights: npt.NDArray[np.float32] = weights[:-counted]
        # Standardising folded into the weights and bias: w · (x - mean) / spread.
        scaled = weights[-counted:].astype(np.float64) / spread
        self.feature_weights = [float(w) for w in scaled]
        self.bias -= float(scaled @ mean)
        self.path = path

    def score(self, vector: npt.NDArray[np.float32], text: str) -> float:
        """P(the strong model does better on this prompt), from its embedding and its text."""
        counts = text_features(text)
        logit = float(self.embedding_weights @ vector) + self.bias
        logit += sum(w * x for w, x in zip(self.feature_weights, counts, strict=True))
        return 1.0 / (1.0 + math.exp(-logit))


def save_router(
    path: Path,
    weights: npt.NDArray[np.float64],
    bias: float,
    standardised: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    trained_on: str,
    prompts: int,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    mean, spread = standardised
    np.savez(
        partial,
        format=np.array(FORMAT),
        weights=weights.astype(np.float32),
        bias=np.array(bias),
        feature_mean=mean,
        feature_spread=spread,
        trained_on=np.array(trained_on),
        prompts=np.array(prompts),
    )
    partial.replace(path)

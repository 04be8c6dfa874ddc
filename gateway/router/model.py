"""The learned router at run time: the probability that the strong model is needed for a prompt, from
the prompt's MiniLM embedding (the one the policy and the cache already share), by logistic
regression. One dot product: microseconds, numpy only.

The artifact is a small `.npz` written by `gateway router train` (`gateway.router.training`): the
weights, the bias, a format tag and what it was trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

FORMAT = "gateway-router/1"
DEFAULT_PATH = Path(__file__).with_name("models") / "router.npz"


class RouterMissing(RuntimeError):
    pass


class RouterModel:
    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        if not path.is_file():
            raise RouterMissing(f"router model {path} not found: run `gateway router train DATA...`")
        try:
            with np.load(path, allow_pickle=False) as saved:
                found = str(saved["format"])
                self.weights: npt.NDArray[np.float32] = saved["weights"].astype(np.float32)
                self.bias = float(saved["bias"])
                self.trained_on = str(saved["trained_on"])
                self.prompts = int(saved["prompts"])
        except (OSError, KeyError, ValueError) as error:
            raise RouterMissing(f"{path} is not a router model: {error}") from None
        if found != FORMAT:
            raise RouterMissing(f"{path} is {found}, not {FORMAT}: retrain it")
        self.path = path

    def score(self, vector: npt.NDArray[np.float32]) -> float:
        """P(the strong model does better on this prompt)."""
        return 1.0 / (1.0 + math.exp(-(float(self.weights @ vector) + self.bias)))


def save_router(
    path: Path, weights: npt.NDArray[np.float64], bias: float, trained_on: str, prompts: int
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        format=np.array(FORMAT),
        weights=weights.astype(np.float32),
        bias=np.array(bias),
        trained_on=np.array(trained_on),
        prompts=np.array(prompts),
    )
    partial.replace(path)

"""Load whichever router model a file holds: logistic (`model.RouterModel`, `gateway router train`)
or nearest-neighbour (`knn.KnnRouter`, `gateway router retrain` may keep either), as one interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gateway.router.artifact import RouterMissing


class PromptScorer(Protocol):
    trained_on: str
    prompts: int

    def score(self, vector: npt.NDArray[np.float32], text: str) -> float:
        """P(the strong route is needed for this prompt)."""
        ...


def load_router(path: Path) -> PromptScorer:
    from gateway.router.knn import FORMAT as KNN_FORMAT
    from gateway.router.knn import KnnRouter
    from gateway.router.model import RouterModel

    if not path.is_file():
        raise RouterMissing(f"router model {path} not found: run `gateway router train DATA...`")
    try:
        with np.load(path, allow_pickle=False) as saved:
            found = str(saved["format"])
    except (OSError, KeyError, ValueError) as error:
        raise RouterMissing(f"{path} is not a router model: {error}") from None
    return KnnRouter(path) if found == KNN_FORMAT else RouterModel(path)

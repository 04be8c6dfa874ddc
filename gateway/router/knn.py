"""The nearest-neighbour router: a prompt's P(strong needed) is the share of its `k` most similar
recorded prompts (by the embedding's cosine) that needed the strong route. The simple baseline that
published routing work finds hard to beat, and one that learns from a team's own traffic with nothing
to tune but `k`. One matrix-vector product over the recorded prompts (a few thousand: well under a
millisecond), numpy only.

The artifact (`.npz`, format `gateway-router-knn/1`): the recorded prompts' unit vectors (float16), their
labels, `k`, and what they were recorded from; written by `gateway router retrain`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.router.artifact import RouterMissing

FORMAT = "gateway-router-knn/1"
DEFAULT_K = 15


class KnnRouter:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise RouterMissing(f"router model {path} not found")
        try:
            with np.load(path, allow_pickle=False) as saved:
                found = str(saved["format"])
                if found != FORMAT:
                    raise RouterMissing(f"{path} is {found}, not {FORMAT}")
                self._vectors = saved["vectors"].astype(np.float32)
                self._labels = saved["labels"].astype(np.float32)
                self.k = int(saved["k"])
                self.trained_on = str(saved["trained_on"])
        except (OSError, KeyError, ValueError) as error:
            raise RouterMissing(f"{path} is not a router model: {error}") from None
        self.prompts = len(self._labels)
        self.path = path

    def score(self, vector: npt.NDArray[np.float32], text: str) -> float:
        """The share of the nearest recorded prompts that needed the strong route (`text` unused:
        the neighbours' texts are not kept)."""
        return float(nearest_share(self._vectors, self._labels, vector[None, :], self.k)[0])


def nearest_share(
    vectors: npt.NDArray[np.float32],
    labels: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
) -> npt.NDArray[np.float64]:
    """For each query row, the mean label of its `k` most similar rows of `vectors`."""
    k = max(1, min(k, len(labels)))
    similarity = queries @ vectors.T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    shares: npt.NDArray[np.float64] = labels[nearest].mean(axis=1).astype(np.float64)
    return shares


def save_knn(
    path: Path, vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_], k: int, trained_on: str
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        format=np.array(FORMAT),
        vectors=vectors.astype(np.float16),
        labels=labels.astype(np.uint8),
        k=np.array(k),
        trained_on=np.array(trained_on),
    )
    partial.replace(path)

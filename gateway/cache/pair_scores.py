"""Scores for labelled pairs, shared by training and calibration: the cache's candidate stage (the
cosine of the two questions' embeddings, the stored side kept as int8 the way the index keeps it) and
the verifier's probability for the pairs that pass it. Both report progress on stderr."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from gateway.cache.pairs import Pair
from gateway.cache.semantic_index import CANDIDATE_FLOOR, dequantise, quantise
from gateway.embedding.embedder import Embedder
from gateway.progress import Progress

Scores = npt.NDArray[np.float32]


def candidate_cosines(pairs: Sequence[Pair], embedder: Embedder) -> Scores:
    """Each pair's cosine as the index would compute it (each distinct text embedded once)."""
    texts = sorted({text for pair in pairs for text in (pair.text_a, pair.text_b)})
    row_of = {text: row for row, text in enumerate(texts)}
    vectors = embedder.embed(texts, progress="embedding")
    queries = vectors[[row_of[pair.text_a] for pair in pairs]]
    stored = dequantise(*quantise(vectors[[row_of[pair.text_b] for pair in pairs]]))
    cosines: Scores = np.einsum("ij,ij->i", queries, stored).astype(np.float32)
    return cosines


def verified_scores(pairs: Sequence[Pair], cosines: Scores, score: Callable[[str, str], float]) -> Scores:
    """The verifier's score for each pair the candidate stage passes, 0 for the others (never hits)."""
    scores = np.zeros(len(pairs), dtype=np.float32)
    progress = Progress("verifying", len(pairs))
    for index, pair in enumerate(pairs):
        if cosines[index] >= CANDIDATE_FLOOR:
            scores[index] = score(pair.text_a, pair.text_b)
        progress.update(index + 1)
    return scores

"""The semantic layer's vector index: for each (namespace, context key), the embeddings of the cached
questions, searched for the nearest ones to a new question.

Questions are only ever compared within one group, so a hit can never cross a tenant or a context.
Vectors are stored as int8 with one scale per vector (388 bytes instead of 1,536; cosine error about
0.001). A group is searched by brute force while it is small, and moves to an HNSW graph (usearch)
once it passes `FLAT_LIMIT` entries, where brute force would cost milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from usearch.index import Index

Vectors = npt.NDArray[np.float32]
Codes = npt.NDArray[np.int8]

DIMENSION = 384
# Candidates below this cosine are not even shown to the verifier: on the QQP training half, fewer than
# 1% of same-intent pairs fall below it.
CANDIDATE_FLOOR = 0.7
FLAT_LIMIT = 2048
# A group starts with room for one vector and doubles: many contexts (conversations) hold one entry.
_FIRST_CAPACITY = 1


def quantise(vectors: Vectors) -> tuple[Codes, Vectors]:
    """Rows as int8 codes and the scale that brings each back (row = codes * scale)."""
    peak = np.abs(vectors).max(axis=-1, keepdims=True)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    return np.round(vectors / scales).astype(np.int8), scales[..., 0]


def dequantise(codes: Codes, scales: Vectors) -> Vectors:
    return (codes.astype(np.float32) * scales[..., None]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Neighbour:
    key: str
    cosine: float


class _FlatGroup:
    """Brute force over int8 rows; removal moves the last row into the hole."""

    def __init__(self) -> None:
        self.codes: Codes = np.empty((_FIRST_CAPACITY, DIMENSION), dtype=np.int8)
        self.scales: Vectors = np.empty(_FIRST_CAPACITY, dtype=np.float32)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, codes: Codes, scale: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.scales):
                self.codes = np.concatenate([self.codes, np.empty_like(self.codes)])
                self.scales = np.concatenate([self.scales, np.empty_like(self.scales)])
            self.keys.append(key)
            self.rows[key] = row
        self.codes[row], self.scales[row] = codes, scale

    def remove(self, key: str) -> bool:
        row = self.rows.pop(key, None)
        if row is None:
            return False
        last = len(self.keys) - 1
        moved = self.keys.pop()
        if row != last:
            self.keys[row], self.rows[moved] = moved, row
            self.codes[row], self.scales[row] = self.codes[last], self.scales[last]
        return True

    def nearest(self, query: Vectors, count: int, floor: float) -> list[Neighbour]:
        size = len(self.keys)
        cosines = dequantise(self.codes[:size], self.scales[:size]) @ query
        best = np.argsort(-cosines)[:count] if size <= count else np.argpartition(-cosines, count)[:count]
        ordered = sorted(best.tolist(), key=lambda row: -cosines[row])
        # int8 rounding can take a vector's cosine with itself a hair above 1.
        return [Neighbour(self.keys[r], min(float(cosines[r]), 1.0)) for r in ordered if cosines[r] >= floor]

    def memory_bytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)


class _GraphGroup:
    """An HNSW graph (usearch, int8) for a large group; keys map to the graph's integer labels."""

    def __init__(self, flat: _FlatGroup) -> None:
        self.graph = Index(ndim=DIMENSION, metric="cos", dtype="i8", connectivity=16, expansion_search=64)
        self.keys: dict[int, str] = {}
        self.labels: dict[str, int] = {}
        self._next = 0
        size = len(flat)
        vectors = dequantise(flat.codes[:size], flat.scales[:size])
        for row, key in enumerate(flat.keys):
            self.add(key, vectors[row])

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, key: str, vector: Vectors) -> None:
        self.remove(key)
        label, self._next = self._next, self._next + 1
        self.graph.add(label, vector, threads=1)
        self.keys[label], self.labels[key] = key, label

    def remove(self, key: str) -> bool:
        label = self.labels.pop(key, None)
        if label is None:
            return False
        del self.keys[label]
        self.graph.remove(label)
        return True

    def nearest(self, query: Vectors, count: int, floor: float) -> list[Neighbour]:
        found = self.graph.search(query, count, threads=1)
        neighbours = []
        for label, distance in zip(found.keys.tolist(), found.distances.tolist(), strict=True):
            cosine = 1.0 - float(distance)
            if cosine >= floor and label in self.keys:
                neighbours.append(Neighbour(self.keys[label], cosine))
        return neighbours

    def memory_bytes(self) -> int:
        return int(self.graph.memory_usage)


class SemanticIndex:
    """All groups of one store. Not thread-safe: it lives on the event loop."""

    def __init__(self, flat_limit: int = FLAT_LIMIT) -> None:
        self._flat_limit = flat_limit
        self._groups: dict[str, dict[str, _FlatGroup | _GraphGroup]] = {}

    def __len__(self) -> int:
        return sum(len(group) for groups in self._groups.values() for group in groups.values())

    def add(self, namespace: str, context: str, key: str, vector: Vectors) -> None:
        groups = self._groups.setdefault(namespace, {})
        group = groups.get(context)
        if group is None:
            group = groups[context] = _FlatGroup()
        if isinstance(group, _FlatGroup):
            codes, scale = quantise(vector)
            group.add(key, codes, float(scale))
            if len(group) > self._flat_limit:
                groups[context] = _GraphGroup(group)
        else:
            group.add(key, vector)

    def remove(self, namespace: str, context: str, key: str) -> bool:
        groups = self._groups.get(namespace)
        group = groups.get(context) if groups is not None else None
        if groups is None or group is None or not group.remove(key):
            return False
        if not len(group):
            del groups[context]
            if not groups:
                del self._groups[namespace]
        return True

    def drop(self, namespace: str | None = None) -> None:
        """Forget a namespace, or everything."""
        if namespace is None:
            self._groups.clear()
        else:
            self._groups.pop(namespace, None)

    def nearest(
        self, namespace: str, context: str, query: Vectors, count: int = 4, floor: float = CANDIDATE_FLOOR
    ) -> list[Neighbour]:
        """Up to `count` stored questions of this namespace and context with cosine at least `floor`,
        nearest first."""
        group = self._groups.get(namespace, {}).get(context)
        if group is None:
            return []
        return group.nearest(query, count, floor)

    def memory_bytes(self) -> int:
        """The vectors' and graphs' memory (the Python bookkeeping around them is not counted here;
        the benchmark measures the process)."""
        return sum(group.memory_bytes() for groups in self._groups.values() for group in groups.values())

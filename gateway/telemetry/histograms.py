"""The gateway's histograms, aggregated here, and the prometheus_client collector that puts them on /metrics.

Why not the OpenTelemetry SDK: its `Histogram.record` checks the value, then cleans, copies and hashes the
attribute dict to find the series, ~8 µs a measurement. A request makes six, ~50 µs of the event loop's
core, which cost the gateway a third of its throughput even when fed in batches. Here each series is a
`Buckets` cell found once per label set (the Telemetry keeps it with the request's counter cells, see
telemetry._Series), so a measurement is one bisect and two additions under the lock the counters hold.

/metrics does not change: `HistogramCollector` writes each histogram as the OpenTelemetry Prometheus
exporter wrote the SDK's (tests/telemetry/test_histograms.py compares the two byte for byte): same family
name, help and unit; label names are the attribute keys with runs of other characters than [a-zA-Z0-9] made
"_", sorted, and a label some series of the family lack is written "" as the exporter backfills it; label
values are strings as given, other values as JSON; `le` is the boundary as Python writes it ("0.25", "1.0",
"16"); buckets are cumulative, then _count and _sum; a series appears with its first measurement. Values the
SDK would refuse (negative, NaN, infinite) are dropped, and past `MAX_SERIES` label sets new ones share one
overflow series, as in the SDK.

OTLP and extra metric readers still get SDK histograms: a `Histogram` made with `export=True` also keeps
each value until `take_unexported` hands it over (see `Telemetry.record_histograms`).
"""

from __future__ import annotations

import json
import math
import re
import threading
from bisect import bisect_left
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

from opentelemetry.util.types import AttributeValue
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from gateway.telemetry import names
from gateway.telemetry.record import Attributes

# The SDK's default limit of label sets per metric; past it, measurements go to one overflow series.
MAX_SERIES: Final = 2000
_OVERFLOW_KEY: Final = ("otel.metric.overflow",)
_OVERFLOW_ATTRIBUTES: Final[Mapping[str, AttributeValue]] = {"otel.metric.overflow": True}
# The exporter's rules (opentelemetry.exporter.prometheus._mapping): UCUM "s" becomes a _seconds suffix,
# annotations such as {token} are dropped, and label names keep only [a-zA-Z0-9_].
_PROMETHEUS_UNITS: Final[Mapping[str, str]] = {names.UNIT_SECONDS: "seconds"}
_NOT_IN_LABEL_NAME: Final = re.compile(r"[^a-zA-Z0-9]+")


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """One histogram as an OpenTelemetry instrument: name, unit, description and bucket boundaries."""

    name: str
    unit: str
    description: str
    bounds: tuple[float, ...]


REQUEST_DURATION: Final = HistogramSpec(
    names.METRIC_REQUEST_DURATION, names.UNIT_SECONDS, "Whole request, arrival to last byte.",
    names.LATENCY_BUCKETS_S,
)  # fmt: skip
TIME_TO_FIRST_BYTE: Final = HistogramSpec(
    names.METRIC_TIME_TO_FIRST_BYTE, names.UNIT_SECONDS, "Arrival to the first byte sent back.",
    names.LATENCY_BUCKETS_S,
)  # fmt: skip
OVERHEAD: Final = HistogramSpec(
    names.METRIC_OVERHEAD, names.UNIT_SECONDS, "The gateway's own share: total minus upstream time.",
    names.OVERHEAD_BUCKETS_S,
)  # fmt: skip
GEN_AI_OPERATION_DURATION: Final = HistogramSpec(
    names.METRIC_GEN_AI_OPERATION_DURATION, names.UNIT_SECONDS, "GenAI operation duration.",
    names.GEN_AI_DURATION_BUCKETS_S,
)  # fmt: skip
GEN_AI_TOKEN_USAGE: Final = HistogramSpec(
    names.METRIC_GEN_AI_TOKEN_USAGE, names.UNIT_TOKEN, "Number of input and output tokens used.",
    names.GEN_AI_TOKEN_BUCKETS,
)  # fmt: skip


class Buckets:
    """One histogram's series for one label set: a count per bucket (the last one past every boundary) and
    the sum. Call `record` only while holding the histogram's lock."""

    __slots__ = ("attributes", "bounds", "counts", "labels", "sum")

    def __init__(self, bounds: tuple[float, ...], attributes: Attributes) -> None:
        self.bounds = bounds
        # The OpenTelemetry attributes (for the SDK) and the same as Prometheus labels, made once.
        self.attributes = attributes
        self.labels = {_label_name(key): _label_value(value) for key, value in attributes.items()}
        self.counts = [0] * (len(bounds) + 1)
        # Starts as an int, as in the SDK, so that whole numbers (tokens) add up exactly.
        self.sum: float = 0

    def record(self, value: float) -> None:
        # A value on a boundary counts in that boundary's bucket (le is "less than or equal").
        if 0 <= value < math.inf:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value


class _ExportedBuckets(Buckets):
    """Buckets that also keep each value for the SDK histograms, until `Histogram.take_unexported`."""

    __slots__ = ("unexported",)

    def __init__(self, bounds: tuple[float, ...], attributes: Attributes) -> None:
        super().__init__(bounds, attributes)
        self.unexported: list[float] = []

    def record(self, value: float) -> None:
        if 0 <= value < math.inf:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value
            self.unexported.append(value)


class Histogram:
    """The series of one histogram by label set, under a lock shared with the Telemetry's counters."""

    __slots__ = ("_cells", "_export", "_le", "_name", "_unit", "lock", "spec")

    def __init__(self, spec: HistogramSpec, lock: threading.Lock, *, export: bool = False) -> None:
        self.spec = spec
        self.lock = lock
        self._export = export
        self._cells: dict[Hashable, Buckets] = {}
        self._name = names.PROMETHEUS_NAMES[spec.name]
        self._unit = _PROMETHEUS_UNITS.get(spec.unit, "")
        self._le = (*(f"{bound}" for bound in spec.bounds), "+Inf")

    def cell(self, key: Hashable, attributes: Attributes) -> Buckets:
        """The series of a label set (`key` identifies it, `attributes` are its labels), made on first use."""
        with self.lock:
            found = self._cells.get(key)
            if found is None:
                if len(self._cells) >= MAX_SERIES:
                    key, attributes = _OVERFLOW_KEY, _OVERFLOW_ATTRIBUTES
                    found = self._cells.get(key)
                if found is None:
                    kind = _ExportedBuckets if self._export else Buckets
                    found = self._cells[key] = kind(self.spec.bounds, attributes)
            return found

    def take_unexported(self) -> list[tuple[Attributes, list[float]]]:
        """The values recorded since the last call, by series (none unless made with `export=True`)."""
        taken: list[tuple[Attributes, list[float]]] = []
        with self.lock:
            for found in self._cells.values():
                if isinstance(found, _ExportedBuckets) and found.unexported:
                    taken.append((found.attributes, found.unexported))
                    found.unexported = []
        return taken

    def snapshot(self) -> list[tuple[dict[str, str], list[int], float]]:
        """Labels, bucket counts and sum of every series; call while holding the lock. A series without a
        measurement yet is left out, as the SDK does (a record makes the GenAI series of a cache hit too)."""
        return [
            (found.labels, found.counts.copy(), found.sum)
            for found in self._cells.values()
            if any(found.counts)
        ]

    def family(self, series: Sequence[tuple[dict[str, str], list[int], float]]) -> HistogramMetricFamily:
        """A `snapshot` as the OpenTelemetry Prometheus exporter writes it."""
        keys = sorted({key for labels, _, _ in series for key in labels})
        family = HistogramMetricFamily(self._name, self.spec.description, labels=keys, unit=self._unit)
        for labels, counts, total in series:
            family.add_metric(
                [labels.get(key, "") for key in keys],
                list(zip(self._le, accumulate(counts), strict=True)),
                total,
            )
        return family


class HistogramCollector:
    """A prometheus_client collector of histograms that share `lock`: it copies them all under the lock
    (collection may run on another thread than `record`), then formats them without it."""

    def __init__(self, lock: threading.Lock, histograms: Sequence[Histogram]) -> None:
        self._lock = lock
        self._histograms = tuple(histograms)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshots = [(histogram, histogram.snapshot()) for histogram in self._histograms]
        for histogram, series in snapshots:
            if series:
                yield histogram.family(series)


def _label_name(key: str) -> str:
    if key[:1].isdigit():
        key = "_" + key[1:]
    return _NOT_IN_LABEL_NAME.sub("_", key)


def _label_value(value: AttributeValue) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)

"""Counter totals: one cell per label set, read whole by the collecting thread, bounded in number."""

from __future__ import annotations

import threading

from opentelemetry.metrics import CallbackOptions

from gateway.telemetry.totals import Totals


def test_one_cell_per_label_set() -> None:
    totals = Totals(threading.Lock())
    totals.add(("cheap",), {"route": "cheap"})
    totals.add(("cheap",), {"route": "cheap"}, 2.5)
    cell = totals.cell(("frontier",), {"route": "frontier"})
    with totals.lock:
        cell.value += 1

    observed = {(dict(o.attributes or {})["route"], o.value) for o in totals.observe(CallbackOptions())}
    assert observed == {("cheap", 3.5), ("frontier", 1.0)}


def test_label_sets_past_the_limit_share_one_overflow_cell() -> None:
    totals = Totals(threading.Lock())
    for team in range(2100):
        totals.add((team,), {"team": str(team)})

    observed = list(totals.observe(CallbackOptions()))
    assert len(observed) == 2001
    overflow = [o for o in observed if o.attributes == {"otel.metric.overflow": True}]
    assert [o.value for o in overflow] == [100]

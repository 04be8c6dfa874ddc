"""The soak's plot: throughput, latency, errors and the gateway's RSS over the run, stacked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.bench.soak_report import MB, RSS_GROWTH_TARGET_PCT, Window

# Okabe-Ito colours: told apart with the common colour-vision deficiencies.
BLUE, ORANGE, GREEN, VERMILION, PURPLE, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#999999",
)


def plot(path: Path, windows: Sequence[Window], warmup_s: float, title: str) -> None:
    """Four panels sharing the time axis (minutes, each window drawn at its middle); warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [w.series() for w in windows]
    middles = [(w.start_s + w.end_s) / 120 for w in windows]
    figure, (rate, latency, errors, rss) = plt.subplots(4, 1, figsize=(9, 10), dpi=120, sharex=True)

    rate.plot(middles, [r["rate_per_s"] for r in rows], color=BLUE, linewidth=2, label="completed")
    offered = [w.sent / (w.seconds or 1.0) for w in windows]
    rate.plot(middles, offered, color=ORANGE, linestyle="--", linewidth=1.2, label="offered (sent)")
    rate.set_ylabel("requests/s")
    rate.set_ylim(bottom=0)

    for key, colour, label in (
        ("latency_p50_ms", GREEN, "latency p50"),
        ("latency_p95_ms", ORANGE, "latency p95"),
        ("latency_p99_ms", VERMILION, "latency p99"),
        ("overhead_p99_ms", PURPLE, "gateway overhead p99"),
    ):
        points = [(m, r[key]) for m, r in zip(middles, rows, strict=True) if r[key]]
        latency.plot([m for m, _ in points], [v for _, v in points], color=colour, label=label)
    latency.set_yscale("log")
    latency.set_ylabel("ms (log scale)")

    counts = [r["errors"] for r in rows]
    errors.bar(middles, counts, width=[w.seconds / 60 for w in windows], color=VERMILION)
    errors.set_ylabel("errors per window")
    errors.set_ylim(0, max(1, *counts) * 1.1)
    if not any(counts):
        errors.text(0.5, 0.5, "no errors", transform=errors.transAxes, ha="center", va="center", color=GREY)

    rss.plot(middles, [r["rss_mb"] for r in rows], color=BLUE, label="gateway RSS")
    warm = [w.rss_bytes / MB for w in windows if w.end_s <= warmup_s + 1e-9]
    if warm:
        limit = warm[-1] * (1 + RSS_GROWTH_TARGET_PCT / 100)
        rss.axhline(limit, color=GREY, linestyle="--", linewidth=1, label="RSS after warm-up + 10 % (limit)")
    rss.set_ylabel("RSS (MB)")
    rss.set_xlabel("minutes into the run (shaded: warm-up)")

    for axes in (rate, latency, errors, rss):
        if warmup_s > 0:
            axes.axvspan(0, warmup_s / 60, color=GREY, alpha=0.15, linewidth=0)
        axes.grid(alpha=0.3)
    for axes in (rate, latency, rss):
        axes.legend(loc="upper left", fontsize="small")
    rate.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)

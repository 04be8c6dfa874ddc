"""The overload benchmark's plot: interactive first-byte p99 (and p50, dotted) by load level with
admission on and off,
and under it, one panel per class, how its requests ended (shares of answered, downgraded, deferred,
shed and errors) for each level and configuration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.bench.overload_load import CLASSES, INTERACTIVE, OUTCOMES
from gateway.bench.overload_report import OFF, ON
from gateway.bench.soak_plot import BLUE, GREEN, GREY, ORANGE, PURPLE, VERMILION

CONFIG_COLOURS = MappingProxyType({ON: BLUE, OFF: VERMILION})
OUTCOME_COLOURS = MappingProxyType(dict(zip(OUTCOMES, (GREEN, BLUE, PURPLE, ORANGE, VERMILION), strict=True)))


def plot(path: Path, figures: Sequence[dict[str, Any]], title: str) -> None:
    """Write the PNG from `overload_report.run_figures` of every run (levels in any order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(figures, key=lambda f: (f["level"], f["config"] != ON))
    levels = sorted({f["level"] for f in runs})
    figure = plt.figure(figsize=(12, 8), dpi=120)
    grid = figure.add_gridspec(2, len(CLASSES), height_ratios=(1, 1.1))
    latency = figure.add_subplot(grid[0, :])
    for config, key, style in (
        (ON, "first_byte_p99_ms", "-"), (OFF, "first_byte_p99_ms", "-"),
        (ON, "first_byte_p50_ms", ":"), (OFF, "first_byte_p50_ms", ":"),
    ):  # fmt: skip
        points = [
            (f["level"], f["classes"][INTERACTIVE][key])
            for f in runs
            if f["config"] == config and f["classes"][INTERACTIVE][key] is not None
        ]
        if points:
            latency.plot(
                [x for x, _ in points], [y for _, y in points], marker="o", linestyle=style,
                linewidth=2 if style == "-" else 1.2, color=CONFIG_COLOURS[config],
                label=f"admission {config}, {'p99' if key.endswith('p99_ms') else 'p50'}",
            )  # fmt: skip
    latency.set_xscale("log")
    latency.set_xticks(levels, [f"{level:g}x" for level in levels])
    latency.minorticks_off()
    latency.set_xlabel("offered load (multiple of the frontier's capacity)")
    latency.set_ylabel("interactive first byte,\nanswered requests (ms)")
    latency.set_ylim(bottom=0)
    latency.grid(alpha=0.3)
    if latency.get_legend_handles_labels()[0]:
        latency.legend(loc="upper left", fontsize="small")
    else:
        latency.text(0.5, 0.5, "no interactive answers", transform=latency.transAxes, ha="center", color=GREY)
    latency.set_title(title)

    labels = [f"{f['level']:g}x {f['config']}" for f in runs]
    for column, name in enumerate(CLASSES):
        axes = figure.add_subplot(grid[1, column])
        bottom = [0.0] * len(runs)
        for outcome in OUTCOMES:
            shares = [
                f["classes"][name]["outcomes"][outcome] / (f["classes"][name]["count"] or 1) * 100
                for f in runs
            ]
            axes.bar(labels, shares, bottom=bottom, color=OUTCOME_COLOURS[outcome], label=outcome)
            bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
        axes.set_title(name)
        axes.set_ylim(0, 100)
        axes.tick_params(axis="x", labelrotation=60, labelsize="small")
        axes.grid(alpha=0.3, axis="y")
        if column == 0:
            axes.set_ylabel("requests (%)")
        if column == len(CLASSES) - 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)

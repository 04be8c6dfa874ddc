"""The guard against a learned score that does not beat random routing: a policy (and so `router
calibrate`, which compiles one) that sets a learned_score signal's `beats_random_by` is refused unless
the model's card — written by `gateway router retrain` from held-out recorded traffic — shows an APGR
at least that far above random's, with a permutation p-value under 0.05. The refusal says which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from gateway.router.artifact import RouterMissing
from gateway.router.significance import SIGNIFICANCE


def card_path(model: Path) -> Path:
    """Where a retrained model's card (its held-out record) lives: beside it, as JSON."""
    return model.with_suffix(".json")


def read_card(model: Path) -> dict[str, Any] | None:
    """The held-out record written beside a retrained model; None for a model without one."""
    path = card_path(model)
    if not path.is_file():
        return None
    card: dict[str, Any] = orjson.loads(path.read_bytes())
    return card


def check_beats_random(model: Path, margin: float) -> None:
    card = read_card(model)
    if card is None:
        raise RouterMissing(
            f"{model} has no held-out record of own traffic, so it cannot be shown to beat random routing:"
            " make it with `gateway router retrain`"
        )
    held = card["held_out"]
    apgr, random_apgr, p_value = float(held["apgr"]), float(held["random_apgr"]), float(held["p_value"])
    figures = (
        f"APGR {apgr:.3f} against random's {random_apgr:.3f} on {held['requests']:,} held-out requests"
        f" of {card.get('team') or 'all teams'}, p = {p_value:.3f}"
    )
    if apgr - random_apgr < margin or p_value >= SIGNIFICANCE:
        raise RouterMissing(
            f"{model} does not beat random routing by {margin} with p < {SIGNIFICANCE}: {figures}; keep the"
            " rule's current signal until more labelled traffic makes a better one"
        )

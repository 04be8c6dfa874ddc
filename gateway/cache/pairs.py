"""Labelled question pairs (JSON lines: `text_a`, `text_b`, `label` 1 = same intent, 0 = not), and the
fixed split the verifier is trained and judged on.

The split is by *group*: questions linked through any pair land on the same side, so a held-out pair
never shares a question with a training pair (QQP repeats questions across pairs; a split by pair
would leak them). A group's side depends only on its texts' hash, so every run and every machine
splits a file the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

Split = Literal["train", "held-out", "all"]
SPLITS: tuple[Split, ...] = ("train", "held-out", "all")


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str
    text_b: str
    same: bool


class PairsError(ValueError):
    pass


def read_pairs(path: Path) -> list[Pair]:
    pairs = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                pairs.append(Pair(str(row["text_a"]), str(row["text_b"]), bool(int(row["label"]))))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise PairsError(
                    f"{path}:{number}: not a pair ({error}); expected text_a, text_b, label"
                ) from None
    if not pairs:
        raise PairsError(f"{path}: no pairs")
    return pairs


def split_pairs(
    pairs: Iterable[Pair], split: Split, held_out_share: float = 0.5, salt: str = ""
) -> list[Pair]:
    """The pairs on one side of the fixed group split (or all of them); `salt` draws a different,
    independent split (for a validation set inside the training side)."""
    pairs = list(pairs)
    if split == "all":
        return pairs
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        while parent.setdefault(text, text) != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        a, b = root(pair.text_a), root(pair.text_b)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for text in parent:
        members.setdefault(root(text), []).append(text)
    held_out: dict[str, bool] = {}
    for group, texts in members.items():
        digest = hashlib.sha256((salt + "\0" + "\0".join(sorted(texts))).encode()).digest()
        held_out[group] = int.from_bytes(digest[:8], "big") / 2**64 < held_out_share
    want = split == "held-out"
    return [pair for pair in pairs if held_out[root(pair.text_a)] == want]

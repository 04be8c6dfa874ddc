"""Labelled pairs: reading them, and the fixed group split that keeps held-out questions unseen."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.cache.pairs import Pair, PairsError, read_pairs, split_pairs


def chain_pairs(groups: int) -> list[Pair]:
    """Groups of three questions linked by two pairs each: a split by pair would cut them."""
    pairs = []
    for g in range(groups):
        pairs.append(Pair(f"q{g}-a", f"q{g}-b", True))
        pairs.append(Pair(f"q{g}-b", f"q{g}-c", g % 2 == 0))
    return pairs


def test_no_question_is_on_both_sides_and_the_split_is_stable() -> None:
    pairs = chain_pairs(400)
    train, held = split_pairs(pairs, "train"), split_pairs(pairs, "held-out")
    assert len(train) + len(held) == len(pairs)
    assert 0.4 < len(held) / len(pairs) < 0.6
    train_texts = {t for p in train for t in (p.text_a, p.text_b)}
    assert not train_texts & {t for p in held for t in (p.text_a, p.text_b)}
    assert split_pairs(list(reversed(pairs)), "held-out") == list(reversed(held))
    # A salt draws a different split, and "all" is everything.
    assert split_pairs(pairs, "held-out", salt="other") != held
    assert split_pairs(pairs, "all") == pairs


def test_reading_pairs_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(orjson.dumps({"text_a": "a", "text_b": "b", "label": 1}) + b'\n\n{"text_a": "x"}\n')
    with pytest.raises(PairsError, match=r"pairs.jsonl:3"):
        read_pairs(path)
    path.write_bytes(orjson.dumps({"text_a": "a", "text_b": "b", "label": "0"}) + b"\n")
    assert read_pairs(path) == [Pair("a", "b", False)]

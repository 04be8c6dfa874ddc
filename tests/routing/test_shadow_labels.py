"""Closed-form agreement between two answers: choices, final numbers, code; prose has none."""

from __future__ import annotations

import pytest

from gateway.routing.shadow_labels import agreement, closed_form


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("The answer is (C).", ("choice", "C")),
        ("Answer: b", ("choice", "B")),
        ("C", ("choice", "C")),
        ("She has 3 apples, then buys 12 more, so 1,500 in all.", ("number", "1500")),
        ("The total is 42.50", ("number", "42.5")),
        ("Here:\n```python\ndef f(x):\n    return x+1\n```\n", ("code", "def f(x): return x+1")),
        ("Paris is the capital of France, known for its museums and cafes.", None),
    ],
)
def test_closed_forms(text: str, form: tuple[str, str] | None) -> None:
    assert closed_form(text) == form


def test_agreement_compares_like_with_like() -> None:
    assert agreement("The answer is (C).", "I think the answer is C") is True
    assert agreement("So 18 in all.", "That makes 20.") is False
    assert agreement("So 18 in all.", "The answer is (A).") is None  # different kinds: a judge decides
    assert agreement("A long essay about France.", "Another one.") is None

"""Whether two answers to the same request agree, where that can be read off the answers themselves:
closed-form tasks — the same choice (A to E), the same final number, the same code — as the outcome
label a shadow copy earns for the router (agree: the cheaper route was enough). An open answer (prose)
has no closed form: `closed_form` says None, and a judge route or client feedback must decide.
Pure functions: no model, no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

Form = Literal["choice", "number", "code"]

_CHOICE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\)?(?![a-z])|^\s*\(?([A-E])\)?[.):]?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```[\w+-]*\n(.*?)```", re.DOTALL)


def closed_form(text: str) -> tuple[Form, str] | None:
    """The answer's closed form: a code block's code (whitespace-normalised), a stated choice letter,
    or the last number (commas dropped, trailing zeros of decimals too); None for an open answer."""
    fenced = _FENCE.findall(text)
    if fenced:
        return "code", " ".join(fenced[-1].split())
    chosen = [a or b for a, b in _CHOICE.findall(text)]
    if chosen:
        return "choice", chosen[-1].upper()
    numbers = _NUMBER.findall(text)
    if numbers and len(text.split()) <= 60:  # a short answer ending in a figure, not an essay
        value = numbers[-1].replace(",", "")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        return "number", value
    return None


def agreement(first: str, second: str) -> bool | None:
    """Whether two answers agree by their closed forms; None when either has none, or they have
    different kinds (one a choice, the other a number): that takes a judge."""
    a, b = closed_form(first), closed_form(second)
    if a is None or b is None or a[0] != b[0]:
        return None
    return a[1] == b[1]

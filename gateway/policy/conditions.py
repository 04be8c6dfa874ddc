"""Condition trees compiled into small objects that answer fast (`holds`) or with reasons (`explain`)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Protocol

from gateway.policy.schema import AllOf, AnyOf, Compare, Condition, NotOf
from gateway.policy.signals import SignalBook, SignalValue


class CompiledCondition(Protocol):
    def holds(self, book: SignalBook) -> bool: ...

    def explain(self, book: SignalBook) -> tuple[bool, str]: ...


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[SignalValue, Any], bool]:
    """Order comparisons hold only between numbers; a missing (null) value never passes them."""

    def test(value: SignalValue, operand: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and compare(value, operand)

    return test


def _same(value: SignalValue, operand: Any) -> bool:
    """Equality where true is not 1: booleans equal only booleans."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return value is operand
    return bool(value == operand)


def _contains(value: SignalValue, operand: Any) -> bool:
    if isinstance(value, list):
        return operand in value
    return isinstance(value, str) and isinstance(operand, str) and operand in value


TESTS: dict[str, Callable[[SignalValue, Any], bool]] = {
    "eq": _same,
    "ne": lambda value, operand: not _same(value, operand),
    "lt": _ordered(operator.lt),
    "lte": _ordered(operator.le),
    "gt": _ordered(operator.gt),
    "gte": _ordered(operator.ge),
    "in": lambda value, operand: any(_same(value, item) for item in operand),
    "not_in": lambda value, operand: not any(_same(value, item) for item in operand),
    "contains": _contains,
}
SYMBOLS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in",
           "not_in": "not in", "contains": "contains"}  # fmt: skip


class SignalTest:
    def __init__(self, signal: str, op: str, operand: Any) -> None:
        self.signal = signal
        self.op = op
        self.operand = operand
        self._test = TESTS[op]

    def holds(self, book: SignalBook) -> bool:
        return self._test(book.get(self.signal), self.operand)

    def explain(self, book: SignalBook) -> tuple[bool, str]:
        value = book.get(self.signal)
        ok = self._test(value, self.operand)
        verdict = "" if ok else "not "
        return ok, f"{self.signal} = {_show(value)}, {verdict}{SYMBOLS[self.op]} {_show(self.operand)}"


class Every:
    def __init__(self, parts: list[CompiledCondition]) -> None:
        self.parts = parts

    def holds(self, book: SignalBook) -> bool:
        return all(part.holds(book) for part in self.parts)

    def explain(self, book: SignalBook) -> tuple[bool, str]:
        for part in self.parts:
            ok, why = part.explain(book)
            if not ok:
                return False, why
        return True, " and ".join(part.explain(book)[1] for part in self.parts)


class Some:
    def __init__(self, parts: list[CompiledCondition]) -> None:
        self.parts = parts

    def holds(self, book: SignalBook) -> bool:
        return any(part.holds(book) for part in self.parts)

    def explain(self, book: SignalBook) -> tuple[bool, str]:
        reasons = []
        for part in self.parts:
            ok, why = part.explain(book)
            if ok:
                return True, why
            reasons.append(why)
        return False, "none of: " + "; ".join(reasons)


class Negation:
    def __init__(self, inner: CompiledCondition) -> None:
        self.inner = inner

    def holds(self, book: SignalBook) -> bool:
        return not self.inner.holds(book)

    def explain(self, book: SignalBook) -> tuple[bool, str]:
        ok, why = self.inner.explain(book)
        return not ok, f"not ({why})"


def compile_condition(condition: Condition) -> CompiledCondition:
    if isinstance(condition, AllOf):
        return Every([compile_condition(part) for part in condition.all_])
    if isinstance(condition, AnyOf):
        return Some([compile_condition(part) for part in condition.any_])
    if isinstance(condition, NotOf):
        return Negation(compile_condition(condition.not_))
    assert isinstance(condition, Compare)
    return SignalTest(condition.signal, condition.operator, condition.operand)


def comparisons(condition: Condition) -> list[tuple[Compare, tuple[str | int, ...]]]:
    """Every comparison in a tree with its location below `when`, for checks at compile time."""
    if isinstance(condition, AllOf | AnyOf):
        key, parts = ("all", condition.all_) if isinstance(condition, AllOf) else ("any", condition.any_)
        return [(c, (key, i, *loc)) for i, part in enumerate(parts) for c, loc in comparisons(part)]
    if isinstance(condition, NotOf):
        return [(c, ("not", *loc)) for c, loc in comparisons(condition.not_)]
    assert isinstance(condition, Compare)
    return [(condition, ())]


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)

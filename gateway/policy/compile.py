"""Validate, resolve and compile a policy, then run its golden cases: only a policy that passes all of
that can replace the live one. Every problem names the file, the line and the field."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydantic

from gateway.capacity.priority import PRIORITIES
from gateway.policy.aliases import AUTO, NO_ALIASES, ModelAliases
from gateway.policy.conditions import CompiledCondition, comparisons, compile_condition
from gateway.policy.decide import decide
from gateway.policy.patterns import PatternError
from gateway.policy.schema import (
    DEFAULT_RULE,
    BudgetSignal,
    Compare,
    Downgrade,
    LearnedScoreSignal,
    MetadataSignal,
    Policy,
    PrioritySignal,
    RouteHealthSignal,
    Rule,
    SemanticSignal,
    Signal,
    SizeSignal,
)
from gateway.policy.signals import (
    EmbedderUnavailable,
    Evaluator,
    RequestFacts,
    SignalTools,
    build_evaluator,
)
from gateway.policy.source import (
    PolicySource,
    PolicySourceError,
    describe_validation_error,
    load_policy_file,
    load_policy_source,
)
from gateway.router.artifact import RouterMissing

Loc = tuple[str | int, ...]
ProblemAt = Callable[[Loc, str], str]

NUMERIC_OPERATORS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"})
BOOLEAN_OPERATORS = frozenset({"eq", "ne"})
TEXT_OPERATORS = frozenset({"eq", "ne", "in", "not_in", "contains"})


class PolicyError(ValueError):
    """A policy that must not go live; `problems` are 'PATH:LINE: field: message' lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    condition: CompiledCondition


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    policy: Policy
    evaluators: Mapping[str, Evaluator]
    rules: tuple[CompiledRule, ...]
    aliases: ModelAliases = NO_ALIASES


def load_policy(
    path: Path, deployments: Collection[str], tools: SignalTools, *, run_golden: bool = True
) -> CompiledPolicy:
    try:
        source = load_policy_file(path)
    except PolicySourceError as exc:
        raise PolicyError([str(exc)]) from exc
    return compile_policy(source, deployments, tools, name=path.stem, run_golden=run_golden)


def compile_policy_text(
    text: str,
    path: str,
    deployments: Collection[str],
    tools: SignalTools,
    *,
    name: str,
    run_golden: bool = True,
) -> CompiledPolicy:
    """A policy from text (an upload, an edit), checked exactly like one from a file."""
    try:
        source = load_policy_source(text, path)
    except PolicySourceError as exc:
        raise PolicyError([str(exc)]) from exc
    return compile_policy(source, deployments, tools, name=name, run_golden=run_golden)


def compile_policy(
    source: PolicySource,
    deployments: Collection[str],
    tools: SignalTools,
    *,
    name: str,
    run_golden: bool = True,
) -> CompiledPolicy:
    def problem(loc: Loc, message: str) -> str:
        line = source.line_of(loc)
        where = ".".join(str(part) for part in loc)
        return f"{source.path}:{line}: {where}: {message}" if line else f"{source.path}: {where}: {message}"

    if source.data is None:
        raise PolicyError([f"{source.path}: the policy is empty"])
    try:
        policy = Policy.model_validate(source.data)
    except pydantic.ValidationError as exc:
        raise PolicyError(describe_validation_error(source, exc).splitlines()) from exc

    problems = _reference_problems(policy, deployments, problem)
    evaluators: dict[str, Evaluator] = {}
    for signal_name, signal in policy.signals.items():
        try:
            evaluators[signal_name] = build_evaluator(signal, tools)
        except PatternError as exc:
            problems.append(
                problem(("signals", signal_name, "pattern"), f"not a usable regular expression: {exc}")
            )
        except EmbedderUnavailable as exc:
            problems.append(
                problem(("signals", signal_name), f"a {signal.kind} signal needs the local embedder: {exc}")
            )
        except RouterMissing as exc:
            problems.append(problem(("signals", signal_name, "model"), str(exc)))
    if tools.embedder is None:
        for index, rule in enumerate(policy.rules):
            if rule.cache is not None and rule.cache.semantic:
                field = "max_error" if rule.cache.max_error is not None else "similarity"
                where = ("rules", index, "cache", field)
                needs = f"semantic caching needs the local embedder: {tools.embedder_missing}"
                problems.append(problem(where, needs))
    if problems:
        raise PolicyError(problems)
    compiled = CompiledPolicy(
        name,
        policy,
        evaluators,
        tuple(CompiledRule(rule, compile_condition(rule.when)) for rule in policy.rules),
        ModelAliases.of(policy.model_aliases),
    )
    if not run_golden:
        return compiled
    failures = [
        problem(("tests", index), failure)
        for index in range(len(policy.tests))
        if (failure := golden_failure(compiled, index)) is not None
    ]
    if failures:
        raise PolicyError(failures)
    return compiled


def _reference_problems(policy: Policy, deployments: Collection[str], problem: ProblemAt) -> list[str]:
    problems: list[str] = []
    routes = policy.routes
    for route_name, route in routes.items():
        if route_name in deployments:
            problems.append(problem(("routes", route_name), "a route may not have a deployment's name"))
        members = route.deployments if route.deployments is not None else list(route.split or {})
        field = "deployments" if route.deployments is not None else "split"
        for member in members:
            if member not in deployments:
                problems.append(problem(("routes", route_name, field), f"unknown deployment '{member}'"))
    named_routes = (
        ("default_route", policy.default_route),
        ("fallback_route", policy.fallback_route),
        ("reference_route", policy.reference_route),
        ("embeddings_route", policy.embeddings_route),
    )
    for field, value in named_routes:
        if value is not None and value not in routes:
            problems.append(problem((field,), f"unknown route '{value}'"))
    for kind, table in (("teams", policy.budgets.teams), ("keys", policy.budgets.keys)):
        for name, limit in table.items():
            if limit.when_exhausted is not None and limit.when_exhausted not in routes:
                where = ("budgets", kind, name, "when_exhausted")
                problems.append(problem(where, f"unknown route '{limit.when_exhausted}'"))
    if policy.embeddings_cache is not None and policy.embeddings_cache.semantic:
        field = "max_error" if policy.embeddings_cache.max_error is not None else "similarity"
        problems.append(problem(("embeddings_cache", field), "embeddings are cached by exact match only"))
    for model, target in policy.model_aliases.items():
        if target != AUTO and target not in routes and target not in deployments:
            not_a_target = f"'{target}' is not auto, a route or a deployment"
            problems.append(problem(("model_aliases", model), not_a_target))
    for route_name, route in policy.routes.items():
        if route.admission is None:
            continue
        for priority in PRIORITIES:
            action = getattr(route.admission, priority)
            if isinstance(action, Downgrade) and (
                action.downgrade not in routes or action.downgrade == route_name
            ):
                wrong = f"downgrade must name another route, not '{action.downgrade}'"
                problems.append(problem(("routes", route_name, "admission", priority, "downgrade"), wrong))
    for signal_name, signal in policy.signals.items():
        if isinstance(signal, RouteHealthSignal) and signal.route not in routes:
            problems.append(problem(("signals", signal_name, "route"), f"unknown route '{signal.route}'"))
    seen: set[str] = set()
    for index, rule in enumerate(policy.rules):
        if rule.name in seen or rule.name == DEFAULT_RULE:
            problems.append(problem(("rules", index, "name"), f"rule name '{rule.name}' is taken"))
        seen.add(rule.name)
        if rule.route not in routes:
            problems.append(problem(("rules", index, "route"), f"unknown route '{rule.route}'"))
        if rule.shadow is not None and (rule.shadow not in routes or rule.shadow == rule.route):
            problems.append(
                problem(("rules", index, "shadow"), f"shadow must name another route, not '{rule.shadow}'")
            )
        if (rule.shadow_labels or rule.shadow_judge is not None) and rule.shadow is None:
            problems.append(problem(("rules", index, "shadow_labels"), "labels need a shadow route"))
        if rule.shadow_judge is not None and rule.shadow_judge not in routes:
            problems.append(problem(("rules", index, "shadow_judge"), f"unknown route '{rule.shadow_judge}'"))
        for compare, loc in comparisons(rule.when):
            message = _comparison_problem(compare, policy.signals)
            if message:
                problems.append(problem(("rules", index, "when", *loc), message))
    for index, case in enumerate(policy.tests):
        expect = case.expect
        if expect.route not in routes:
            problems.append(problem(("tests", index, "expect", "route"), f"unknown route '{expect.route}'"))
        if expect.rule not in seen and expect.rule != DEFAULT_RULE:
            problems.append(problem(("tests", index, "expect", "rule"), f"unknown rule '{expect.rule}'"))
        for given in case.request.signals:
            if given not in policy.signals:
                problems.append(problem(("tests", index, "request", "signals"), f"unknown signal '{given}'"))
    return problems


def _comparison_problem(compare: Compare, signals: Mapping[str, Signal]) -> str | None:
    signal = signals.get(compare.signal)
    if signal is None:
        return f"unknown signal '{compare.signal}'"
    op = compare.operator
    if isinstance(signal, SizeSignal | LearnedScoreSignal | BudgetSignal):
        allowed = NUMERIC_OPERATORS
    elif isinstance(signal, MetadataSignal):
        allowed = frozenset({"contains"}) if signal.of == "tags" else TEXT_OPERATORS
    elif isinstance(signal, SemanticSignal | PrioritySignal):
        allowed = TEXT_OPERATORS - {"contains"}
    else:
        allowed = BOOLEAN_OPERATORS
        if not isinstance(compare.operand, bool):
            return f"'{compare.signal}' is true or false: compare it with {op}: true or false"
    if op not in allowed:
        usable = ", ".join(sorted(allowed))
        return f"'{op}' does not apply to '{compare.signal}' ({signal.kind}); use one of {usable}"
    return None


def golden_failure(compiled: CompiledPolicy, index: int) -> str | None:
    """Why golden case `index` fails, or None when it passes."""
    case = compiled.policy.tests[index]
    request = case.request
    facts = RequestFacts(
        body=request.body,
        team=request.team,
        key=request.key,
        role=request.role,
        tags=tuple(request.tags),
        request_id=f"golden-{case.name}",
        given=request.signals,
    )
    decision = decide(compiled, facts)
    if (decision.rule, decision.route) == (case.expect.rule, case.expect.route):
        return None
    return (
        f"golden case '{case.name}' failed: expected rule '{case.expect.rule}' -> route "
        f"'{case.expect.route}', got rule '{decision.rule}' -> route '{decision.route}'"
    )

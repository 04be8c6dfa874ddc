"""`gateway policy bench`: what deciding costs per request, and how long a large policy takes to compile.

Prompts come from a data file (ShareGPT-style JSON: a list of {"conversations": [{"from", "value"}]}, or
JSONL of OpenAI request bodies), so the figures are measured on real prompt lengths.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import yaml

from gateway.policy.compile import CompiledPolicy, compile_policy_text, load_policy
from gateway.policy.decide import decide
from gateway.policy.schema import SemanticSignal
from gateway.policy.signals import RequestFacts, load_signal_tools

LARGE_POLICY_RULES = 200


def read_prompts(path: Path, limit: int) -> list[dict[str, Any]]:
    """Request bodies from ShareGPT-style JSON (first human turn) or JSONL of OpenAI bodies."""
    bodies = []
    for body in _bodies(path):
        bodies.append(body)
        if len(bodies) >= limit:
            break
    if not bodies:
        raise ValueError(f"{path}: no prompts found")
    return bodies


def _bodies(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)
        return
    for item in json.loads(text):
        turns = item.get("conversations") or []
        first = next((t.get("value") for t in turns if t.get("from") == "human" and t.get("value")), None)
        if first:
            yield {"model": "auto", "messages": [{"role": "user", "content": first}]}


def time_decisions(policy: CompiledPolicy, bodies: list[dict[str, Any]], rounds: int) -> list[float]:
    """Seconds per decision (signals included), each request with fresh facts as in serving."""
    samples = []
    for round_index in range(rounds):
        for index, body in enumerate(bodies):
            facts = RequestFacts(body=body, request_id=f"{round_index}-{index}")
            started = time.perf_counter()
            decide(policy, facts)
            samples.append(time.perf_counter() - started)
    return samples


def large_policy_text(deployments: Collection[str], rules: int) -> str:
    """A synthetic policy with `rules` rules over every signal kind but the semantic one."""
    names = sorted(deployments)
    policy: dict[str, Any] = {
        "routes": {f"r{i}": {"deployments": [names[i % len(names)]]} for i in range(10)},
        "signals": {
            "tokens": {"kind": "size", "of": "prompt_tokens"},
            "tools": {"kind": "feature", "of": "tools"},
            "team": {"kind": "metadata", "of": "team"},
            **{f"word{i}": {"kind": "keywords", "words": [f"term{i}", f"phrase {i}"]} for i in range(50)},
            **{f"re{i}": {"kind": "regex", "pattern": rf"\bcode{i}\w*\b"} for i in range(50)},
        },
        "rules": [
            {
                "name": f"rule-{i}",
                "when": {
                    "any": [
                        {"signal": f"word{i % 50}", "eq": True},
                        {"signal": f"re{i % 50}", "eq": True},
                        {"all": [{"signal": "team", "eq": f"team{i}"}, {"signal": "tokens", "gt": i}]},
                    ]
                },
                "route": f"r{i % 10}",
            }
            for i in range(rules)
        ],
        "default_route": "r0",
        "tests": [
            {
                "name": f"case {i}",
                "request": {"body": {"messages": [{"role": "user", "content": f"about term{i}"}]}},
                "expect": {"rule": f"rule-{i}", "route": f"r{i % 10}"},
            }
            for i in range(50)
        ],
    }
    return yaml.safe_dump(policy)


def run_policy_bench(
    policy_path: Path,
    deployments: Collection[str],
    data: Path,
    limit: int,
    rounds: int,
    json_path: Path | None,
) -> int:
    tools = load_signal_tools()
    policy = load_policy(policy_path, deployments, tools)
    bodies = read_prompts(data, limit)
    print(f"deciding {len(bodies)} prompts x {rounds} rounds with {policy_path}", file=sys.stderr)
    time_decisions(policy, bodies[:50], 1)  # warm-up: tiktoken's encoder, regex caches
    samples = sorted(time_decisions(policy, bodies, rounds))
    text = large_policy_text(deployments, LARGE_POLICY_RULES)
    compile_times = []
    for _ in range(3):
        started = time.perf_counter()
        compile_policy_text(text, "<large>", deployments, tools, name="large")
        compile_times.append(time.perf_counter() - started)
    semantic = any(isinstance(signal, SemanticSignal) for signal in policy.policy.signals.values())
    figures = {
        "policy": str(policy_path),
        "semantic": semantic,
        "data": str(data),
        "decisions": len(samples),
        "decide_p50_ms": _ms(samples, 0.50),
        "decide_p99_ms": _ms(samples, 0.99),
        "decide_max_ms": round(samples[-1] * 1000, 4),
        "large_policy_rules": LARGE_POLICY_RULES,
        "large_policy_compile_s": round(min(compile_times), 4),
    }
    rows = [
        ("decisions measured", f"{figures['decisions']:,}", ""),
        ("signals + decision p50 (ms)", f"{figures['decide_p50_ms']:.3f}", ""),
        ("signals + decision p99 (ms)", f"{figures['decide_p99_ms']:.3f}", "≤ 2.5" if semantic else "≤ 0.3"),
        ("signals + decision max (ms)", f"{figures['decide_max_ms']:.3f}", ""),
        (
            f"compile a {LARGE_POLICY_RULES}-rule policy (s)",
            f"{figures['large_policy_compile_s']:.3f}",
            "≤ 1",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"| {'metric':<{width}} | {'value':>9} | target |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|--------|")
    for name, value, target in rows:
        print(f"| {name:<{width}} | {value:>9} | {target:<6} |")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def _ms(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 4)

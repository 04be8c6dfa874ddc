"""The depth table of `gateway bench`: what each layer of a policy costs, one gateway per row.

Every row starts its own gateway (same deployments, same fake upstream, same core as the main
column) with its own policy, sends `"model": "auto"` so the policy decides, and measures 1 client and
50 clients, non-streamed:

- pass-through: the main gateway column (an explicit route, no rule evaluated);
- rules: size, regex and feature signals and three rules, nothing semantic;
- semantic signal: one semantic signal (the local embedder) and the rules that read it;
- semantic cache miss: a rule caching semantically; every request a prompt never sent before;
- semantic cache hit: the same rule over a cache of 100,000 entries in Redis, every request the
  rephrasing of a stored question (exact key different, so only the semantic layer can answer);
- responses, messages (plain and streamed): the pass-through request through the Responses API and
  Anthropic's Messages API instead of chat completions, translated to the chat upstream and back;
- responses passed through (plain and streamed): to a deployment of the same fake that serves the
  Responses API itself (`responses_api: true`), the body and the answer's bytes passed on.

Prompts are real: ShareGPT's first human turns. No row after pass-through sends the same text twice
(a gateway may remember a model's recent results, which a new prompt never finds): the prompts are
taken in turn and, after the last, again with a pass number in front and a `seed` per pass (a new
cache context, so the miss row cannot hit what an earlier pass stored); the hit row's rephrasings are
spaced differently on each pass. Request bytes are built a pass at a time, off the load's hot path.
A row that cannot run (its policy refused, no embedder, no redis-server) is reported as failed, and
the bench goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.depth_rows import CACHE_ENTRIES, DEPTH_ROWS
from gateway.bench.load import PROMPT, Endpoint, ProtocolError, RequestSource, header_once, repeated
from gateway.bench.procs import Child, ChildFailed
from gateway.bench.proxies import (
    DEPLOYMENT,
    GATEWAY_STARTUP_TIMEOUT,
    RESPONSES_DEPLOYMENT,
    ROUTE,
    Column,
    gateway_spec,
    launch,
    measure,
    progress,
    write_policy,
)
from gateway.bench.report import LATENCY, THROUGHPUT, DepthRun, TargetRun
from gateway.bench.trace import TraceError, read_prompts
from gateway.cache.keys import normalise

CACHE_HEADER = b"x-gateway-cache"
CACHE_NAMESPACE = "bench"  # a shared namespace: `shared:bench`, whatever the caller's team
TTL_SECONDS = 86_400
# The cache-hit row stores prompts up to this long: questions, as a cache serves them.
STORED_QUESTION_CHARS = 300
# The cache-hit row's `similarity`. The verifier's recommended threshold (~0.95, for Quora questions)
# accepts about 1 in 10 of these rephrasings of ShareGPT prompts, and not many more of the very same
# prompts (median score 0.84): at it, this row would measure misses. A hit costs the same whatever the
# threshold (embedding, search, fetch, one verification), so the row accepts what the verifier finds
# at least this likely the same question, and asks only the questions whose rephrasing it accepts
# (about 4 in 5 of them).
HIT_SIMILARITY = 0.5
# Sequential requests after start-up, before the timed phases (they also load lazy models).
PROBES = 3
LOCAL_ROUTE = "local"

PASS_THROUGH, RULES, SEMANTIC_SIGNAL, CACHE_MISS, CACHE_HIT = DEPTH_ROWS[:5]
RESPONSES, RESPONSES_STREAM, MESSAGES, MESSAGES_STREAM, RESPONSES_NATIVE, RESPONSES_NATIVE_STREAM = (
    DEPTH_ROWS[5:]
)
LABELS = {
    PASS_THROUGH: "pass-through",
    RULES: "rules",
    SEMANTIC_SIGNAL: "semantic signal",
    CACHE_MISS: "semantic cache miss",
    CACHE_HIT: "semantic cache hit",
    RESPONSES: "responses API",
    RESPONSES_STREAM: "responses API, streamed",
    MESSAGES: "messages API",
    MESSAGES_STREAM: "messages API, streamed",
    RESPONSES_NATIVE: "responses API, passed through",
    RESPONSES_NATIVE_STREAM: "responses API, passed through, streamed",
}
# The other inbound APIs' rows: (path, body, streamed); a body's `model` names a deployment (else the
# main column's route).
OTHER_APIS: dict[str, tuple[str, dict[str, Any], bool]] = {
    RESPONSES_NATIVE: (
        "/v1/responses",
        {"model": RESPONSES_DEPLOYMENT, "input": PROMPT, "store": False},
        False,
    ),
    RESPONSES_NATIVE_STREAM: (
        "/v1/responses",
        {"model": RESPONSES_DEPLOYMENT, "input": PROMPT, "store": False, "stream": True},
        True,
    ),
    RESPONSES: ("/v1/responses", {"input": PROMPT, "store": False}, False),
    RESPONSES_STREAM: ("/v1/responses", {"input": PROMPT, "store": False, "stream": True}, True),
    MESSAGES: ("/v1/messages", {"max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}, False),
    MESSAGES_STREAM: (
        "/v1/messages",
        {"max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}], "stream": True},
        True,
    ),
}


def describe(name: str, cache_entries: int) -> str:
    """What a row's policy adds, in a few words (the table's second column)."""
    return {
        PASS_THROUGH: "explicit route, no rule",
        RULES: "size + regex + 2 feature signals, 3 rules",
        SEMANTIC_SIGNAL: "1 semantic signal (8 examples), 2 rules",
        CACHE_MISS: "semantic cache rule, every prompt new",
        CACHE_HIT: f"semantic cache rule, {cache_entries:,} entries in Redis",
        RESPONSES: "explicit route, translated to chat",
        RESPONSES_STREAM: "explicit route, translated to chat, streamed",
        MESSAGES: "explicit route, translated to chat",
        MESSAGES_STREAM: "explicit route, translated to chat, streamed",
        RESPONSES_NATIVE: "a deployment serving the Responses API",
        RESPONSES_NATIVE_STREAM: "a deployment serving the Responses API, streamed",
    }[name]


class RowUnavailable(Exception):
    """Something a row needs is not there (prompts, the verifier's card); the message says what."""


@dataclass(frozen=True, slots=True)
class DepthSetup:
    """What every row runs with."""

    config: Path  # the deployments file, in the bench's temporary directory
    key: str
    env: dict[str, str]  # the gateways' environment
    tmp: Path
    proxy_cpus: set[int] | None
    client_cpus: set[int] | None
    fake: Child
    warmup: float
    duration: float
    prompts: Path
    embedder: Path
    # Every core the bench may use (it runs on the client's, but may spread out while nothing is timed).
    bench_cpus: set[int]
    cache_entries: int = CACHE_ENTRIES


@dataclass(slots=True)
class _Plan:
    """One row, ready to start: its policy, what it sends, what its answers should say."""

    policy: dict[str, Any] | None  # None: the main gateway's policy and an explicit route
    requests: Callable[[Endpoint], RequestSource]
    expect: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_limit: float = GATEWAY_STARTUP_TIMEOUT
    # Said before the gateway starts, when its start-up takes long.
    startup_note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


# ---- policies ------------------------------------------------------------------------------------


def _routes() -> dict[str, Any]:
    return {ROUTE: {"deployments": [DEPLOYMENT]}, LOCAL_ROUTE: {"deployments": [DEPLOYMENT]}}


def rules_policy() -> dict[str, Any]:
    """policies/default.yaml's signals and rules, both routes on the fake."""
    return {
        "routes": _routes(),
        "signals": {
            "prompt_tokens": {"kind": "size", "of": "prompt_tokens"},
            "uses_tools": {"kind": "feature", "of": "tools"},
            "wants_json": {"kind": "feature", "of": "json_mode"},
            "looks_like_code": {
                "kind": "regex",
                "in": "user",
                "pattern": r"```|\b(def|class|function|import|SELECT|stack trace|traceback|compile)\b",
            },
        },
        "rules": [
            {"name": "code-and-tools-to-frontier", "route": ROUTE,
             "when": {"any": [{"signal": "uses_tools", "eq": True}, {"signal": "looks_like_code", "eq": True},
                              {"signal": "wants_json", "eq": True}]}},
            {"name": "long-prompts-to-frontier", "route": ROUTE,
             "when": {"signal": "prompt_tokens", "gt": 1500}},
            {"name": "short-questions-local", "route": LOCAL_ROUTE,
             "when": {"signal": "prompt_tokens", "lte": 300}},
        ],
        "default_route": ROUTE,
    }  # fmt: skip


def semantic_signal_policy() -> dict[str, Any]:
    """policies/by-topic.yaml's semantic signal and the rules that read it."""
    return {
        "routes": _routes(),
        "signals": {
            "topic": {
                "kind": "semantic",
                "min_similarity": 0.3,
                "categories": {
                    "coding": ["Write a Python function that reverses a linked list",
                               "My program crashes with an error, how do I fix this bug?",
                               "Explain what this SQL query does"],
                    "analysis": ["Compare the pros and cons of these two business strategies",
                                 "Summarise the key findings of this research paper"],
                    "smalltalk": ["Hi, how are you today?", "Tell me a joke",
                                  "What's a good name for a cat?"],
                },
            },
        },
        "rules": [
            {"name": "coding-and-analysis-frontier", "route": ROUTE,
             "when": {"signal": "topic", "in": ["coding", "analysis"]}},
            {"name": "small-talk-local", "route": LOCAL_ROUTE,
             "when": {"signal": "topic", "eq": "smalltalk"}},
        ],
        "default_route": ROUTE,
    }  # fmt: skip


def semantic_cache_policy(similarity: float) -> dict[str, Any]:
    """One rule for every non-streamed request, cached with the semantic layer in a shared namespace."""
    return {
        "routes": {ROUTE: {"deployments": [DEPLOYMENT]}},
        "signals": {"streaming": {"kind": "feature", "of": "stream"}},
        "rules": [
            {"name": "cache-everything", "route": ROUTE, "when": {"signal": "streaming", "eq": False},
             "cache": {"similarity": similarity, "ttl_seconds": TTL_SECONDS,
                       "namespace": CACHE_NAMESPACE}},
        ],
        "default_route": ROUTE,
    }  # fmt: skip


def verifier_threshold() -> float:
    """The verifier's recommended `similarity` (from its card, in this checkout)."""
    from gateway.cache.verifier import DEFAULT_PATH, VerifierCard, card_path_for

    try:
        return VerifierCard.read(card_path_for(DEFAULT_PATH)).recommended_threshold
    except (OSError, ValueError, TypeError) as exc:
        raise RowUnavailable(f"the verifier's card cannot be read: {exc}") from None


# ---- what the rows send --------------------------------------------------------------------------


def read_unique_prompts(path: Path) -> list[str]:
    """The first human turn of each conversation, once each as the cache's exact key sees text."""
    try:
        prompts = read_prompts(path)
    except TraceError as exc:
        raise RowUnavailable(f"no prompts: {exc}") from None
    seen: set[str] = set()
    unique = []
    for prompt in prompts:
        key = normalise(prompt)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique


def fresh_prompts(endpoint: Endpoint, prompts: Sequence[str], fields: Mapping[str, Any]) -> RequestSource:
    """Requests that never repeat: the prompts in turn; then again, each pass with its number in
    front and its own `seed` (a cache context of its own). One pass is encoded at a time."""
    if not prompts:
        raise ValueError("no prompts")

    def one_pass(number: int) -> list[bytes]:
        texts = prompts if number == 0 else [f"({number}) {prompt}" for prompt in prompts]
        return [
            endpoint.encode({**fields, "messages": [{"role": "user", "content": text}], "seed": number})
            for text in texts
        ]

    return itertools.chain.from_iterable(map(one_pass, itertools.count())).__next__


def cache_body(question: str) -> dict[str, Any]:
    """A request the cache rule may answer (temperature 0) and the body the cache keys are made of."""
    return {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0}


def rephrased(question: str) -> str:
    """The question asked again: its first letter's case flipped, its closing punctuation changed
    (dropped, or a `?` added). Its exact key differs, so only the semantic layer can answer it."""
    text = question.strip()
    text = text[:-1].rstrip() if text[-1] in ".?!" else f"{text}?"
    return text[:1].swapcase() + text[1:]


def respaced(text: str, times: int) -> str:
    """`text` with its first space widened by `times` more (or as many spaces after it): the same words
    to the exact key (which collapses spaces) and to the models' tokenizers, another input to any memory
    of recent inputs keyed on the text."""
    if times <= 0:
        return text
    head, space, tail = text.partition(" ")
    return f"{head}{' ' * (times + 1)}{tail}" if space else text + " " * times


def rephrasings(endpoint: Endpoint, questions: Sequence[str]) -> RequestSource:
    """Each question rephrased, in turn, round and round, each round spaced differently so that no
    request is the same text as another (a semantic hit is a new question, not a repeated one)."""
    if not questions:
        raise ValueError("no questions")
    asked = [rephrased(question) for question in questions]

    def one_pass(number: int) -> list[bytes]:
        return [endpoint.encode(cache_body(respaced(text, number))) for text in asked]

    return itertools.chain.from_iterable(map(one_pass, itertools.count())).__next__


def stored_questions(prompts: Sequence[str]) -> list[str]:
    """The short prompts whose rephrasing is a different exact key."""
    return [
        prompt
        for prompt in prompts
        if 3 <= len(prompt.strip()) <= STORED_QUESTION_CHARS
        and normalise(rephrased(prompt)) != normalise(prompt)
    ]


def verified_questions(questions: Sequence[str], similarity: float) -> list[str]:
    """The questions whose rephrasing this checkout's verifier finds at least `similarity` likely the
    same (a row of hits must not depend on the ones it rejects)."""
    from gateway.cache.verifier import Verifier, VerifierMissing

    try:
        verifier = Verifier()
    except VerifierMissing as exc:
        raise RowUnavailable(str(exc)) from None
    return [question for question in questions if verifier.score(rephrased(question), question) >= similarity]


# ---- the rows ------------------------------------------------------------------------------------


class _Prompts:
    """The prompts file, read once, on the first row that needs it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._prompts: list[str] | None = None

    def get(self) -> list[str]:
        if self._prompts is None:
            self._prompts = read_unique_prompts(self._path)
        return self._prompts


async def _plan(name: str, setup: DepthSetup, prompts: _Prompts, stack: contextlib.ExitStack) -> _Plan:
    if name == PASS_THROUGH:
        return _Plan(None, lambda endpoint: repeated(endpoint.request(stream=False)))
    auto = {"model": "auto"}
    if name == RULES:
        texts = prompts.get()
        return _Plan(
            rules_policy(),
            lambda endpoint: fresh_prompts(endpoint, texts, auto),
            details={"prompts": str(setup.prompts), "distinct_prompts": len(texts)},
        )
    if name == SEMANTIC_SIGNAL:
        texts = prompts.get()
        return _Plan(
            semantic_signal_policy(),
            lambda endpoint: fresh_prompts(endpoint, texts, auto),
            details={"prompts": str(setup.prompts), "distinct_prompts": len(texts)},
        )
    if name == CACHE_MISS:
        texts = prompts.get()
        similarity = verifier_threshold()
        return _Plan(
            semantic_cache_policy(similarity),
            lambda endpoint: fresh_prompts(endpoint, texts, {"model": "auto", "temperature": 0}),
            expect="miss",
            details={"prompts": str(setup.prompts), "distinct_prompts": len(texts), "similarity": similarity},
        )
    if name == CACHE_HIT:
        return await _hit_plan(setup, prompts.get(), HIT_SIMILARITY, stack)
    if name in OTHER_APIS:
        path, body, stream = OTHER_APIS[name]

        def other_api(endpoint: Endpoint) -> RequestSource:
            there = dataclasses.replace(endpoint, path=path)
            return repeated(there.encode({"model": endpoint.model, **body}))  # the body's model wins

        return _Plan(None, other_api, stream=stream, details={"path": path, "stream": stream})
    raise ValueError(f"no depth row {name!r}")


async def _hit_plan(
    setup: DepthSetup, prompts: Sequence[str], similarity: float, stack: contextlib.ExitStack
) -> _Plan:
    # Numpy, onnxruntime and Redis's client stay out of the load generator unless this row runs.
    from gateway.bench import cache_fill

    questions = verified_questions(stored_questions(prompts), similarity)
    if not questions:
        raise RowUnavailable(
            f"no prompt of at most {STORED_QUESTION_CHARS} characters whose rephrasing the verifier accepts"
        )

    entries = max(setup.cache_entries, len(questions))
    progress(f"semantic cache hit: starting a redis-server and storing {entries:,} entries")
    max_entries = 2 * entries + 10_000  # room for what the row itself adds should a request miss
    try:
        # Nothing is measured while filling: the bench and Redis may use every core, then go back to
        # the client's core, where Redis serves the row's gateway as the fake does.
        redis_server, url = await cache_fill.start_redis(setup.tmp, setup.env, None, stack)
        with _unpinned(setup, redis_server):
            filled = await cache_fill.fill(
                url,
                entries=entries,
                max_entries=max_entries,
                questions=questions,
                embedder_path=setup.embedder,
                namespace=f"shared:{CACHE_NAMESPACE}",
                route=ROUTE,
                deployment=DEPLOYMENT,
                body_of=cache_body,
                ttl_seconds=TTL_SECONDS,
                report=progress,
            )
    except cache_fill.FillFailed as exc:
        raise RowUnavailable(str(exc)) from None
    progress(
        f"  stored {filled.entries:,} entries ({filled.real_questions:,} real questions) in "
        f"{filled.embedding_seconds + filled.writing_seconds:.1f} s "
        f"(embedding {filled.embedding_seconds:.1f} s, writing {filled.writing_seconds:.1f} s)"
    )
    return _Plan(
        semantic_cache_policy(similarity),
        lambda endpoint: rephrasings(endpoint, questions),
        expect="semantic",
        env={
            "GATEWAY_REDIS_URL": url,
            "GATEWAY_REDIS_PREFIX": cache_fill.REDIS_PREFIX,
            "GATEWAY_CACHE_MAX_ENTRIES": str(max_entries),
        },
        # The gateway loads every entry's vector into its index before it serves.
        startup_limit=GATEWAY_STARTUP_TIMEOUT + entries / 200,
        startup_note=f"the gateway loads the {filled.entries:,} entries into its index before it serves",
        details={
            "cache_fill": {
                "entries": filled.entries,
                "real_questions": filled.real_questions,
                "embedding_s": round(filled.embedding_seconds, 1),
                "writing_s": round(filled.writing_seconds, 1),
            },
            "prompts": str(setup.prompts),
            "distinct_questions_asked": len(questions),
            "similarity": similarity,
        },
    )


@contextlib.contextmanager
def _unpinned(setup: DepthSetup, child: Child) -> Iterator[None]:
    """The bench process on all the cores it had; afterwards it and `child` on the client's."""
    if setup.client_cpus is None:
        yield
        return
    os.sched_setaffinity(0, setup.bench_cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, setup.client_cpus)
        os.sched_setaffinity(child.pid, setup.client_cpus)


async def _probe(column: Column, source: RequestSource, expect: str) -> None:
    """A few requests one at a time; says what the cache answered, so a row that does not hit shows."""
    seen = []
    for _ in range(PROBES):
        status, body, value = await header_once(column.endpoint, source(), CACHE_HEADER)
        if status != 200:
            raise ChildFailed(f"{column.run.label} answered HTTP {status}: {body[:300]!r}")
        seen.append(value)
    if any(value != expect for value in seen):
        progress(f"  warning: {column.run.label} probes answered {', '.join(seen)} (expected {expect})")


async def _run_row(name: str, setup: DepthSetup, prompts: _Prompts) -> DepthRun:
    label = LABELS[name]
    with contextlib.ExitStack() as stack:
        plan = await _plan(name, setup, prompts, stack)
        policy = None if plan.policy is None else write_policy(setup.config, name, plan.policy)
        spec = gateway_spec(
            setup.config,
            setup.key,
            policy=policy,
            model=ROUTE if plan.policy is None else "auto",
            name=f"gateway-{name}",
            label=f"gateway · {label}",
            startup_limit=plan.startup_limit,
        )
        env = {**setup.env, **plan.env, "GATEWAY_STATE_DIR": str(setup.tmp / f"state-{name}")}
        sources: list[RequestSource] = []

        def first_request(endpoint: Endpoint) -> bytes:
            sources.append(plan.requests(endpoint))
            return sources[0]()

        if plan.startup_note:
            progress(f"  {plan.startup_note}")
        column = await launch(spec, env, setup.tmp, setup.proxy_cpus, stack, first_request)
        source = sources[0]
        header = CACHE_HEADER if plan.expect is not None else None
        if plan.expect is not None:
            await _probe(column, source, plan.expect)
        for phase, clients in ((LATENCY, 1), (THROUGHPUT, 50)):
            await measure(
                column, setup.fake, phase, clients, plan.stream, setup.warmup, setup.duration,
                requests=source, count_header=header,
            )  # fmt: skip
        assert column.child is not None
        column.run.rss_after_bytes = column.child.rss_bytes()
        return _depth_run(name, describe(name, setup.cache_entries), column.run, plan.expect, plan.details)


def _depth_run(
    name: str, runs: str, run: TargetRun, expect: str | None = None, details: dict[str, Any] | None = None
) -> DepthRun:
    return DepthRun(
        name,
        LABELS.get(name, run.label),
        runs,
        expect=expect,
        startup_s=run.startup_s,
        rss_idle_bytes=run.rss_idle_bytes,
        rss_after_bytes=run.rss_after_bytes,
        phases={phase: run.phases[phase] for phase in (LATENCY, THROUGHPUT) if phase in run.phases},
        details=dict(details or {}),
    )


def floor_row(floor: TargetRun) -> DepthRun:
    """The Python floor, the table's reference (its ratio is 1)."""
    return _depth_run("floor", "bare forwarder, for reference", floor)


async def run_rows(setup: DepthSetup, names: Sequence[str], main_gateway: TargetRun | None) -> list[DepthRun]:
    """Each named row in turn, its gateway stopped before the next starts. The pass-through row is the
    main gateway column when that was measured in this run."""
    prompts = _Prompts(setup.prompts)
    rows = []
    for name in names:
        if name == PASS_THROUGH and main_gateway is not None:
            rows.append(
                _depth_run(name, f"{describe(name, setup.cache_entries)} (the main column)", main_gateway)
            )
            continue
        progress(f"depth row: {LABELS[name]}")
        try:
            rows.append(await _run_row(name, setup, prompts))
        except (ChildFailed, RowUnavailable, ProtocolError, OSError) as exc:
            reason = exc.summary if isinstance(exc, ChildFailed) else str(exc) or type(exc).__name__
            progress(f"  depth row {LABELS[name]} failed: {reason}")
            rows.append(
                DepthRun(
                    name, LABELS[name], describe(name, setup.cache_entries), status="failed", error=reason
                )
            )
    return rows

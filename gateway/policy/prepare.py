"""The async step before `decide`: every embedding the policy's rules can ask for, computed through the
embedder's batcher (off the event loop, batched with other requests') and put in the request's memo, so
that the pure, synchronous `decide` only reads it.

A policy without semantic or learned-score signals costs one pass over its evaluators and nothing else.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.embedding.batcher import EmbeddingBatcher
from gateway.policy.compile import CompiledPolicy
from gateway.policy.conditions import comparisons
from gateway.policy.signals import EmbeddingEvaluator, RequestFacts


def embedding_evaluators(compiled: CompiledPolicy, *, explain: bool = False) -> dict[str, EmbeddingEvaluator]:
    """The policy's embedding signals that a rule's condition names (every one when explaining, since
    explaining evaluates every signal)."""
    found = {
        name: evaluator
        for name, evaluator in compiled.evaluators.items()
        if isinstance(evaluator, EmbeddingEvaluator)
    }
    if not found or explain:
        return found
    named = {compare.signal for rule in compiled.rules for compare, _ in comparisons(rule.rule.when)}
    return {name: evaluator for name, evaluator in found.items() if name in named}


async def prepare_embeddings(compiled: CompiledPolicy, facts: RequestFacts, *, explain: bool = False) -> None:
    """Put in `facts.memo` the embedding of each text the policy's embedding signals will read."""
    if facts.only_given or not any(
        isinstance(evaluator, EmbeddingEvaluator) for evaluator in compiled.evaluators.values()
    ):
        return
    wanted: dict[Any, tuple[EmbeddingBatcher, str]] = {}
    for name, evaluator in embedding_evaluators(compiled, explain=explain).items():
        batcher = evaluator.batcher
        if name in facts.given or batcher is None or evaluator.memo_key in facts.memo:
            continue
        text = evaluator.text_to_embed(facts)
        if text is not None:
            wanted.setdefault(evaluator.memo_key, (batcher, text))
    if len(wanted) == 1:  # the usual case: the last user turn, shared by every signal and the cache
        ((key, (batcher, text)),) = wanted.items()
        facts.memo[key] = await batcher.embed(text)
    elif wanted:
        vectors = await asyncio.gather(*(batcher.embed(text) for batcher, text in wanted.values()))
        facts.memo.update(zip(wanted, vectors, strict=True))

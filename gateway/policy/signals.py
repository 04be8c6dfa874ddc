"""Signal values for one request, computed lazily: only the signals a rule asks for are computed,
each at most once."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.embedding.batcher import EmbeddingBatcher
from gateway.policy.patterns import compile_pattern
from gateway.policy.schema import (
    BudgetSignal,
    FeatureSignal,
    KeywordSignal,
    LearnedScoreSignal,
    MetadataSignal,
    PrioritySignal,
    RegexSignal,
    RouteHealthSignal,
    Scalar,
    SemanticSignal,
    Signal,
    SizeSignal,
    TextScope,
)
from gateway.settings import Settings
from gateway.tokens import TokenCounter, content_text

if TYPE_CHECKING:
    from gateway.embedding.embedder import Embedder

SignalValue = Scalar | list[str]
# Where a request's memo keeps the last user turn's embedding; the semantic cache reads the same one.
QUESTION_MEMO = ("embedding", "last_user")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the policy may look at: the OpenAI body and who sent it. Never the provider keys."""

    body: Mapping[str, Any]
    team: str | None = None
    key: str | None = None
    role: str | None = None
    tags: tuple[str, ...] = ()
    request_id: str = ""
    # The request's priority class (`interactive`, `standard`, `deferrable`), when known.
    priority: str | None = None
    # Whether a route can take requests now (None: not known, e.g. outside a running gateway).
    route_healthy: Callable[[str], bool | None] | None = None
    # The largest fraction spent of the caller's budgets (None: no budget, or outside a gateway).
    budget_spent: Callable[[], float | None] | None = None
    # Values supplied from outside the request (learned score, budget, health, or a golden case).
    given: Mapping[str, SignalValue] = field(default_factory=dict)
    # Replaying a record: only `given` is known, the request itself is not (it was never stored).
    only_given: bool = False
    # Per-request results computed once and shared (the text's embedding), never compared.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False)

    def text(self, scope: TextScope) -> str:
        messages = self.body.get("messages") or ()
        if scope == "last_user":
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            return content_text(users[-1].get("content")) if users else ""
        roles = {"system": ("system", "developer"), "user": ("user",), "all": None}[scope]
        return "\n".join(
            content_text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and (roles is None or m.get("role") in roles)
        )


Evaluator = Callable[[RequestFacts], SignalValue]


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> Any:
        """L2-normalised embeddings, one row per text (a numpy array)."""
        ...


@dataclass(frozen=True, slots=True)
class SignalTools:
    """What computing signals takes: a token counter, and the local embedder when there is one, with
    the batcher that runs it off the event loop for requests (`prepare_embeddings`)."""

    tokens: TokenCounter
    embedder: TextEmbedder | None = None
    # Why there is no embedder, for the message when a policy needs one.
    embedder_missing: str = "no embedder configured"
    # The same embedder on its worker thread; None where nothing runs on an event loop (or in tests
    # that embed synchronously). Its owner closes it (`aclose`).
    batcher: EmbeddingBatcher | None = None


class LazyEmbedder:
    """Loads the ONNX embedder on first use, so a gateway whose policy has no semantic signal never
    pays for onnxruntime. Safe to call from several threads (the batcher's worker, a policy compiled
    on a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._embedder: Embedder | None = None
        self._loading = threading.Lock()

    def _loaded(self) -> Embedder:
        if self._embedder is None:
            with self._loading:
                if self._embedder is None:
                    from gateway.embedding.embedder import Embedder

                    # 128 tokens: the length the model was trained at, and half the time of 256 on long
                    # prompts.
                    self._embedder = Embedder(self.path, max_tokens=128)
        return self._embedder

    def embed(self, texts: Sequence[str]) -> Any:
        return self._loaded().embed(texts)

    def embed_one(self, text: str) -> Any:
        """One text's vector: the same numbers as `embed([text])[0]`."""
        return self._loaded().embed_one(text)


def load_signal_tools(tokens: TokenCounter | None = None, embedder_path: Path | None = None) -> SignalTools:
    """The tools for this machine: an embedder when its model file exists (see `make embedder`), and its
    batcher (which starts no thread until a request first needs it)."""
    path: Path = embedder_path or Settings.model_fields["embedder_path"].default
    tokens = tokens or TokenCounter()
    if not path.exists():
        return SignalTools(tokens, None, f"the embedder model {path} is missing: run `make embedder`")
    embedder = LazyEmbedder(path)
    return SignalTools(tokens, embedder, batcher=EmbeddingBatcher(embedder.embed_one))


class MissingSignal(LookupError):
    """A replayed decision needs a signal whose value was not recorded."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class SignalBook:
    """The values of one request's signals, each computed on first use."""

    def __init__(self, evaluators: Mapping[str, Evaluator], facts: RequestFacts) -> None:
        self._evaluators = evaluators
        self._facts = facts
        self.values: dict[str, SignalValue] = {}

    def get(self, name: str) -> SignalValue:
        if name in self.values:
            return self.values[name]
        if name in self._facts.given:
            value: SignalValue = self._facts.given[name]
        elif self._facts.only_given:
            raise MissingSignal(name)
        else:
            value = self._evaluators[name](self._facts)
        self.values[name] = value
        return value


class EmbedderUnavailable(RuntimeError):
    """A semantic signal was asked for where no embedder is loaded."""


def build_evaluator(signal: Signal, tools: SignalTools) -> Evaluator:
    """The function computing one signal; regexes, word patterns and exemplar embeddings are built
    here, once."""
    if isinstance(signal, SizeSignal):
        return _size(signal, tools.tokens)
    if isinstance(signal, SemanticSignal):
        if tools.embedder is None:
            raise EmbedderUnavailable(tools.embedder_missing)
        return _semantic(signal, tools.embedder, tools.batcher)
    if isinstance(signal, FeatureSignal):
        return _feature(signal)
    if isinstance(signal, KeywordSignal):
        words = "|".join(re.escape(word) for word in signal.words)
        flags = 0 if signal.case_sensitive else re.IGNORECASE
        keyword_pattern = re.compile(rf"(?<!\w)(?:{words})(?!\w)", flags)
        return lambda facts: keyword_pattern.search(facts.text(signal.scope)) is not None
    if isinstance(signal, RegexSignal):
        regex = compile_pattern(signal.pattern, case_sensitive=signal.case_sensitive)
        return lambda facts: regex.search(facts.text(signal.scope)) is not None
    if isinstance(signal, MetadataSignal):
        return _metadata(signal)
    if isinstance(signal, BudgetSignal):
        return lambda facts: facts.budget_spent() if facts.budget_spent else None
    if isinstance(signal, LearnedScoreSignal):
        if tools.embedder is None:
            raise EmbedderUnavailable(tools.embedder_missing)
        return _learned(signal, tools.embedder, tools.batcher)
    if isinstance(signal, PrioritySignal):
        return lambda facts: facts.priority
    if isinstance(signal, RouteHealthSignal):
        route = signal.route
        return lambda facts: facts.route_healthy(route) if facts.route_healthy else None
    raise AssertionError(f"no evaluator for {signal!r}")


def memo_key_for(scope: TextScope) -> tuple[str, str]:
    """Where a request's memo keeps the embedding of the text in `scope` (the last user turn's is the
    one the cache shares)."""
    return QUESTION_MEMO if scope == "last_user" else ("embedding", scope)


class EmbeddingEvaluator:
    """A signal computed from the embedding of one of the request's texts. The embedding is meant to be
    in the request's memo already (`prepare_embeddings` puts it there through the batcher, off the
    event loop); called without it (the CLI, replay, tests), it embeds synchronously and keeps it."""

    def __init__(
        self,
        scope: TextScope,
        embedder: TextEmbedder,
        batcher: EmbeddingBatcher | None,
        from_vector: Callable[[Any, str], SignalValue],
        *,
        empty_is_none: bool = False,
    ) -> None:
        self.scope = scope
        self.memo_key = memo_key_for(scope)
        self.batcher = batcher
        self._embedder = embedder
        self._from_vector = from_vector
        self._empty_is_none = empty_is_none

    def text_to_embed(self, facts: RequestFacts) -> str | None:
        """The text whose embedding the signal reads, or None when it reads none for this request."""
        text = facts.text(self.scope)
        return None if self._empty_is_none and not text else text

    def __call__(self, facts: RequestFacts) -> SignalValue:
        text = self.text_to_embed(facts)
        if text is None:
            return None
        if self.memo_key not in facts.memo:
            facts.memo[self.memo_key] = self._embedder.embed([text])[0]
        return self._from_vector(facts.memo[self.memo_key], text)


def _semantic(
    signal: SemanticSignal, embedder: TextEmbedder, batcher: EmbeddingBatcher | None
) -> EmbeddingEvaluator:
    """Nearest category by the best cosine between the request's text and each category's examples."""
    import numpy

    labels = [name for name, examples in signal.categories.items() for _ in examples]
    exemplars = embedder.embed([text for examples in signal.categories.values() for text in examples])
    floor = signal.min_similarity

    def nearest(vector: Any, text: str) -> SignalValue:
        similarities = exemplars @ vector
        best = int(numpy.argmax(similarities))
        return labels[best] if float(similarities[best]) >= floor else None

    return EmbeddingEvaluator(signal.scope, embedder, batcher, nearest)


def _learned(
    signal: LearnedScoreSignal, embedder: TextEmbedder, batcher: EmbeddingBatcher | None
) -> EmbeddingEvaluator:
    """The router's probability over the last user turn's embedding (shared through the memo)."""
    from gateway.router.guard import check_beats_random
    from gateway.router.loading import load_router
    from gateway.router.model import DEFAULT_PATH

    path = Path(signal.model) if signal.model else DEFAULT_PATH
    if signal.beats_random_by is not None:
        check_beats_random(path, signal.beats_random_by)  # RouterMissing says why not
    model = load_router(path)

    def score(vector: Any, text: str) -> SignalValue:
        return round(model.score(vector, text), 4)

    return EmbeddingEvaluator("last_user", embedder, batcher, score, empty_is_none=True)


def _size(signal: SizeSignal, tokens: TokenCounter) -> Evaluator:
    if signal.of == "prompt_tokens":
        return lambda facts: tokens.count_messages(facts.body.get("messages") or ())
    if signal.of == "messages":
        return lambda facts: len(facts.body.get("messages") or ())

    def max_tokens(facts: RequestFacts) -> SignalValue:
        value = facts.body.get("max_completion_tokens", facts.body.get("max_tokens"))
        return value if isinstance(value, int) else None

    return max_tokens


def _feature(signal: FeatureSignal) -> Evaluator:
    if signal.of == "tools":
        return lambda facts: bool(facts.body.get("tools") or facts.body.get("functions"))
    if signal.of == "json_mode":
        return lambda facts: (
            (facts.body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        )
    if signal.of == "stream":
        return lambda facts: bool(facts.body.get("stream"))
    return lambda facts: any(
        isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image")
        for message in facts.body.get("messages") or ()
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _metadata(signal: MetadataSignal) -> Evaluator:
    if signal.of == "tags":
        return lambda facts: list(facts.tags)
    if signal.of == "user":
        return lambda facts: facts.body.get("user") if isinstance(facts.body.get("user"), str) else None
    attribute = signal.of
    return lambda facts: getattr(facts, attribute)

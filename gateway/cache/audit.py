"""Live precision of the semantic cache: a rule may have a share of its semantic hits checked
(`verify_sample`). The route is called anyway, off the request's path, and its fresh answer compared
with the cached one by embedding; agreement is counted per route, so admins see how often the cache
is right on their own traffic (`gateway_cache_audits_total`, and `GET /admin/cache/audits`).

The live guard: over each route's last `WINDOW` checks, when the upper end of the 95 % interval of
their precision is under what a rule's `max_error` promises (at least `MIN_EVIDENCE` checks), the rule
stops serving semantic hits on that route and says why (`suspended`). While it is suspended, the
candidate it would have served is compared with the fresh answer the client got instead (`observe`:
no extra call), so the evidence keeps coming and the rule serves again once it recovers.

Checks never hold up or change the answer the client got: they run in the background, within a bound
on checks in flight (excess ones are skipped and counted), and a failed call counts as `failed`. The two
answers are embedded off the event loop: through the embedder's batcher when there is one, else on a
worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson

from gateway.cache.store import CachedAnswer
from gateway.capacity.priority import DEFERRABLE
from gateway.embedding.batcher import EmbeddingBatcher
from gateway.intervals import Interval, wilson
from gateway.policy.signals import TextEmbedder
from gateway.routing.background import BoundedTasks, plain_copy
from gateway.routing.catalog import Target
from gateway.routing.executor import RouteExecutor
from gateway.wire import ChatRequest, Completion, Deadline

logger = logging.getLogger("gateway.cache")

AuditOutcome = Literal["agree", "disagree", "failed"]
# Two answers whose embeddings are at least this close say the same thing (MiniLM cosine; answers to
# one question worded differently score 0.85-0.95, answers to different questions rarely above 0.7).
AGREEMENT = 0.8
# The live guard reads a route's last checks, and needs this many before it judges.
WINDOW = 200
MIN_EVIDENCE = 20


@dataclass(slots=True)
class AuditTotals:
    agree: int = 0
    disagree: int = 0
    failed: int = 0
    # The last WINDOW checks that compared two answers (agree or not), oldest first.
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))

    @property
    def precision(self) -> float | None:
        checked = self.agree + self.disagree
        return self.agree / checked if checked else None

    def live(self) -> Interval:
        """The recent checks' precision with its 95 % interval and sample size."""
        return wilson(sum(self.recent), len(self.recent))

    def add(self, outcome: AuditOutcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome != "failed":
            self.recent.append(outcome == "agree")


class CacheAudit:
    def __init__(
        self,
        executor: RouteExecutor,
        embedder: TextEmbedder,
        count: Callable[[AuditOutcome, str], None] | None = None,
        *,
        max_in_flight: int = 8,
        timeout: float = 120.0,
        draw: Callable[[], float] = random.random,
        batcher: EmbeddingBatcher | None = None,
        mark_wrong: Callable[[str, float], None] | None = None,
    ) -> None:
        self._mark_wrong = mark_wrong
        self._executor = executor
        self._embedder = embedder
        self._batcher = batcher
        self._count = count
        self._timeout = timeout
        self._draw = draw
        self._tasks = BoundedTasks(max_in_flight)
        self.totals: dict[str, AuditTotals] = {}
        self.skipped = 0

    def maybe_check(
        self,
        request: ChatRequest,
        target: Target,
        cached: CachedAnswer,
        share: float,
        entry: tuple[str, float] | None = None,
    ) -> None:
        """Check the hit in `share` of cases; a wrong one marks its `entry` (key, score) in the cache."""
        if share <= 0 or self._draw() >= share:
            return
        if self._tasks.full:
            self.skipped += 1
            return
        self._tasks.start(self._check(plain_copy(request), target, cached, entry))

    async def _check(
        self,
        request: ChatRequest,
        target: Target,
        cached: CachedAnswer,
        entry: tuple[str, float] | None = None,
    ) -> None:
        deadline = Deadline.after(self._timeout)
        outcome: AuditOutcome = "failed"
        try:
            fresh = await self._executor.run(
                # Copies the client never sees: behind every request someone waits for.
                target,
                lambda provider: provider.complete(request, deadline),
                deadline,
                priority=DEFERRABLE,
            )
            outcome = await self._compare(cached.body, fresh.result)
        except Exception as error:  # an audit must never take anything else down
            logger.info("cache audit of %s on %s failed: %r", request.request_id, target.route, error)
        self._counted(target.route, outcome)
        if outcome == "disagree" and entry is not None and self._mark_wrong is not None:
            self._mark_wrong(*entry)

    def suspended(self, route: str, max_error: float) -> str | None:
        """Why a rule that promises `max_error` must not serve semantic hits on `route` now; None: it may."""
        totals = self.totals.get(route)
        if totals is None:
            return None
        live = totals.live()
        needed = 1.0 - max_error
        if live.trials < MIN_EVIDENCE or live.high >= needed:
            return None
        return (
            f"live precision {live.share:.2f} [{live.low:.2f}, {live.high:.2f}] over the last {live.trials}"
            f" checks is under the {needed:.2f} that max_error {max_error:g} needs"
        )

    def observe(self, route: str, cached: CachedAnswer, fresh: Completion) -> None:
        """A withheld hit's cached answer against the answer the client got instead (no extra call)."""
        if self._tasks.full:
            self.skipped += 1
            return
        self._tasks.start(self._observe(route, cached, fresh))

    async def _observe(self, route: str, cached: CachedAnswer, fresh: Completion) -> None:
        try:
            outcome = await self._compare(cached.body, fresh)
        except Exception as error:
            logger.info("comparing a withheld hit on %s failed: %r", route, error)
            outcome = "failed"
        self._counted(route, outcome)

    def _counted(self, route: str, outcome: AuditOutcome) -> None:
        self.totals.setdefault(route, AuditTotals()).add(outcome)
        if self._count is not None:
            self._count(outcome, route)

    async def _compare(self, cached_body: bytes, fresh: Completion) -> AuditOutcome:
        cached_text, fresh_text = answer_text(cached_body), answer_text(fresh.body)
        if cached_text is None or fresh_text is None:
            return "failed"
        if cached_text.strip() == fresh_text.strip():
            return "agree"
        if self._batcher is not None:
            cached_vector, fresh_vector = await asyncio.gather(
                self._batcher.embed(cached_text), self._batcher.embed(fresh_text)
            )
        else:
            import numpy as np  # only once a semantic hit is audited (the embedder needs it anyway)

            vectors = await asyncio.to_thread(self._embedder.embed, [cached_text, fresh_text])
            cached_vector, fresh_vector = np.asarray(vectors)
        return "agree" if float(cached_vector @ fresh_vector) >= AGREEMENT else "disagree"

    async def aclose(self) -> None:
        await self._tasks.aclose()


def answer_text(body: bytes) -> str | None:
    """The first choice's text of a `chat.completion` body, or None when there is none."""
    try:
        parsed = orjson.loads(body)
        content = parsed["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None

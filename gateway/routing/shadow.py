"""Shadow copies: a rule may send a copy of (a share of) its requests to a candidate route, to compare
how that route does on real traffic. The copy runs beside the real request, is recorded, and never
answers.

A rule with `shadow_labels` also labels each copied request for the router: once the client's answer
is complete (`PrimaryAnswer.answered`, from the request path) and the copy's is in, the two are compared
by their closed forms (`shadow_labels.agreement`: the same choice, number or code), or, for open
answers, by the rule's `shadow_judge` route asked whether they agree. The label is recorded with what
the router reads of the prompt (its embedding and text counts, not its text) as an outcome
(`router/recorded.py`) for `gateway router retrain`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.capacity.priority import DEFERRABLE
from gateway.errors import GatewayError
from gateway.ledger.redact import answer_text
from gateway.policy.records import ShadowRecord
from gateway.policy.schema import Policy
from gateway.router.recorded import OutcomeRecord
from gateway.routing.background import BoundedTasks, plain_copy
from gateway.routing.catalog import Catalog
from gateway.routing.executor import RouteExecutor
from gateway.routing.shadow_labels import agreement
from gateway.wire import ChatRequest, Completion, Deadline

JUDGE_PROMPT = (
    "Two answers were given to the same request. Do they give the same answer (the same facts, choice,"
    " number or result; wording aside)? Reply with one word, yes or no.\n\nRequest:\n{question}\n\n"
    "Answer A:\n{first}\n\nAnswer B:\n{second}"
)


@dataclass(frozen=True, slots=True)
class Labelling:
    """What labelling a copied request needs: whose it is, the route that answered the client, the
    judge route for open answers, and the prompt's last user turn (embedded for the outcome)."""

    team: str | None
    route: str
    judge: str | None
    question: str


class PrimaryAnswer:
    """The text of the answer the client got, handed to a labelled copy once it is complete."""

    def __init__(self) -> None:
        self._text: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def answered(self, text: str | None) -> None:
        if not self._text.done():
            self._text.set_result(text)

    async def text(self) -> str | None:
        """The text, once answered (the caller bounds the wait)."""
        return await asyncio.shield(self._text)


def chosen(request_id: str, share: float) -> bool:
    """Whether a request is among a rule's copied share: by its id, so the same request always is."""
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


logger = logging.getLogger("gateway.shadow")


class ShadowCopies:
    """Sends copies within a bound on copies in flight: when shadows fall behind, new ones are
    dropped (and counted) rather than queued, so they can never hold back real traffic."""

    def __init__(
        self,
        catalog: Catalog,
        executor: RouteExecutor,
        record: Callable[[ShadowRecord], None],
        *,
        label: Callable[[OutcomeRecord], None] | None = None,
        embed: Callable[[str], Awaitable[Any]] | None = None,
        max_in_flight: int = 16,
        timeout: float = 120.0,
    ) -> None:
        self._catalog = catalog
        self._executor = executor
        self._record = record
        # Outcome labels need both somewhere to go and the embedder for the prompt.
        self._label = label if embed is not None else None
        self._embed = embed
        self._timeout = timeout
        self._tasks = BoundedTasks(max_in_flight)
        self.dropped = 0

    def send(
        self,
        request: ChatRequest,
        rule: str,
        route: str,
        policy: Policy,
        *,
        share: float = 1.0,
        labelling: Labelling | None = None,
    ) -> PrimaryAnswer | None:
        """Copy the request unless it is outside the share or too many copies are in flight; for a
        labelled copy, what to hand the client's answer to."""
        if not chosen(request.request_id, share):
            return None
        if self._tasks.full:
            self.dropped += 1
            return None
        primary = PrimaryAnswer() if labelling is not None and self._label is not None else None
        self._tasks.start(self._run(plain_copy(request), rule, route, policy, labelling, primary))
        return primary

    async def _run(
        self,
        request: ChatRequest,
        rule: str,
        route: str,
        policy: Policy,
        labelling: Labelling | None = None,
        primary: PrimaryAnswer | None = None,
    ) -> None:
        started = time.perf_counter()
        deadline = Deadline.after(self._timeout)
        status, deployment, completion = 200, None, None
        try:
            target = self._catalog.resolve(route, policy, request.request_id)
            outcome = await self._executor.run(
                # Copies the client never sees: behind every request someone waits for.
                target,
                lambda provider: provider.complete(request, deadline),
                deadline,
                priority=DEFERRABLE,
            )
            deployment, completion = outcome.deployment, outcome.result
        except GatewayError as error:
            status = error.status
        except Exception:  # a shadow must never take anything else down
            logger.exception("shadow copy of %s to %s failed", request.request_id, route)
            status = 500
        self._record(_record(request.request_id, rule, route, deployment, status, started, completion))
        if labelling is not None and primary is not None and completion is not None:
            try:
                await self._label_outcome(request, rule, route, policy, labelling, primary, completion)
            except Exception:  # a label is a bonus: never worth more than a log line
                logger.exception("labelling the shadow copy of %s failed", request.request_id)

    async def _label_outcome(
        self,
        request: ChatRequest,
        rule: str,
        route: str,
        policy: Policy,
        labelling: Labelling,
        primary: PrimaryAnswer,
        completion: Completion,
    ) -> None:
        assert self._label is not None and self._embed is not None
        try:
            async with asyncio.timeout(self._timeout):
                first = await primary.text()
        except TimeoutError:  # the client's request failed or never finished
            return
        second = answer_text(completion.body)
        if not first or not second:
            return
        agree, method = agreement(first, second), "closed_form"
        if agree is None and labelling.judge is not None:
            agree, method = (
                await self._ask_judge(labelling, first, second, policy, request.request_id),
                "judge",
            )
        if agree is None:
            return
        import numpy as np  # the embedder's vectors are numpy already

        from gateway.router.features import text_features

        vector = np.asarray(await self._embed(labelling.question), dtype=np.float32)
        counts = np.asarray(text_features(labelling.question), dtype=np.float64)
        self._label(
            OutcomeRecord(
                request.request_id, time.time(), labelling.team, rule, labelling.route, route, agree, method,
                vector.tobytes(), counts.tobytes(),
            )
        )  # fmt: skip

    async def _ask_judge(
        self, labelling: Labelling, first: str, second: str, policy: Policy, request_id: str
    ) -> bool | None:
        assert labelling.judge is not None
        prompt = JUDGE_PROMPT.format(question=labelling.question, first=first, second=second)
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 3,
            "temperature": 0,
        }
        request = ChatRequest(body, f"{request_id}-judge")
        deadline = Deadline.after(self._timeout)
        try:
            target = self._catalog.resolve(labelling.judge, policy, request.request_id)
            outcome = await self._executor.run(
                target, lambda provider: provider.complete(request, deadline), deadline, priority=DEFERRABLE
            )
        except GatewayError:
            return None
        verdict = (answer_text(outcome.result.body) or "").strip().lower()
        if verdict.startswith("yes"):
            return True
        if verdict.startswith("no"):
            return False
        return None

    async def aclose(self) -> None:
        await self._tasks.aclose()


def _record(
    request_id: str,
    rule: str,
    route: str,
    deployment: str | None,
    status: int,
    started: float,
    completion: Completion | None,
) -> ShadowRecord:
    usage = completion.usage if completion is not None else None
    return ShadowRecord(
        request_id,
        time.time(),
        rule,
        route,
        deployment,
        status,
        (time.perf_counter() - started) * 1000,
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
    )

"""Shadow copies: a rule may send a copy of its requests to a candidate route, to compare how that
route does on real traffic. The copy runs beside the real request, is recorded, and never answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.capacity.priority import DEFERRABLE
from gateway.errors import GatewayError
from gateway.policy.records import ShadowRecord
from gateway.policy.schema import Policy
from gateway.routing.background import BoundedTasks, plain_copy
from gateway.routing.catalog import Catalog
from gateway.routing.executor import RouteExecutor
from gateway.wire import ChatRequest, Completion, Deadline

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
        max_in_flight: int = 16,
        timeout: float = 120.0,
    ) -> None:
        self._catalog = catalog
        self._executor = executor
        self._record = record
        self._timeout = timeout
        self._tasks = BoundedTasks(max_in_flight)
        self.dropped = 0

    def send(self, request: ChatRequest, rule: str, route: str, policy: Policy) -> None:
        if self._tasks.full:
            self.dropped += 1
            return
        self._tasks.start(self._run(plain_copy(request), rule, route, policy))

    async def _run(self, request: ChatRequest, rule: str, route: str, policy: Policy) -> None:
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

"""Admission control against a latency objective: before a request is sent upstream, when would its
first byte come? Its route's first deployment is asked how it stands (`capacity/gate.Outlook`: places
in use, requests of this class or above waiting, recent service time), and the prediction is that wait
plus the deployment's recent upstream first-byte time. Within the route's `first_byte_seconds`, the
request goes on as it is. Over it, the route's `admission` says, by class (`policy.schema.RouteAdmission`):

- `queue`: wait for its turn anyway (interactive requests wait ahead of every other class);
- `defer` (deferrable only): wait in spare capacity, without the objective;
- `downgrade: ROUTE`: go to that route instead, when its own prediction is better; else queue (or,
  deferrable, defer) on the route it had;
- `shed`: refused now, 429 with the predicted wait as Retry-After.

Every decision says why (`OverloadNote`: the response's `x-gateway-admission`, explain, the ledger):
"downgraded: frontier queue 4.2 s over its 1.5 s objective". A route without `admission`, or whose
first deployment has no capacity limit, costs nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.capacity.capacity import Capacity
from gateway.capacity.gate import Outlook
from gateway.capacity.priority import DEFERRABLE
from gateway.path.decide import Decide, Routing
from gateway.policy.schema import Downgrade, RouteAdmission
from gateway.wire import ChatRequest

OverloadAction = Literal["queued", "deferred", "downgraded", "shed"]


@dataclass(frozen=True, slots=True)
class OverloadNote:
    """What admission control did with a request that would have missed its route's objective."""

    action: OverloadAction
    reason: str
    # The predicted wait, for a shed request's Retry-After.
    retry_after: float = 1.0

    @property
    def text(self) -> str:
        return f"{self.action}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Prediction:
    deployment: str
    outlook: Outlook
    first_byte_seconds: float

    @property
    def wait_seconds(self) -> float:
        return self.outlook.predicted_wait


class Overload:
    def __init__(self, capacity: Capacity, decide: Decide) -> None:
        self.capacity = capacity
        self._decide = decide

    async def predict(self, routing: Routing, stream: bool) -> Prediction | None:
        """When the first byte of a new request of this class would come from the route's first
        deployment; None when that deployment has no capacity limit."""
        candidates = routing.target.candidates
        if not candidates:
            return None
        name = candidates[0].provider.deployment.name
        gate = self.capacity.gate(name)
        if gate is None:
            return None
        outlook = await gate.outlook(routing.priority)
        first_byte = outlook.predicted_wait + self.capacity.first_byte_seconds(name, stream)
        return Prediction(name, outlook, first_byte)

    async def explain(self, routing: Routing, request: ChatRequest) -> dict[str, Any] | None:
        """How the route's first deployment stands for this request's class, and what admission control
        would do now (None when the route has no objective or that deployment no capacity limit)."""
        admission = _admission_of(routing)
        predicted = await self.predict(routing, request.stream)
        if predicted is None:
            return None
        outlook = predicted.outlook
        explained: dict[str, Any] = {
            "deployment": predicted.deployment, "limit": outlook.limit, "in_flight": outlook.in_flight,
            "waiting": outlook.waiting, "ahead": outlook.ahead,
            "service_seconds": round(outlook.service_seconds, 4),
            "predicted_wait_seconds": round(predicted.wait_seconds, 4),
            "predicted_first_byte_seconds": round(predicted.first_byte_seconds, 4),
        }  # fmt: skip
        if admission is None:
            return explained
        explained["objective_seconds"] = admission.first_byte_seconds
        _, note = await self._apply(routing, request, admission, predicted)
        explained["action"] = note.action if note is not None else "admitted"
        if note is not None:
            explained["reason"] = note.reason
        return explained

    async def admit(self, routing: Routing, request: ChatRequest) -> tuple[Routing, OverloadNote | None]:
        """The routing to call (the same, or a downgrade) and what was done, if anything (a `shed`
        note: the request path refuses the request)."""
        admission = _admission_of(routing)
        if admission is None:
            return routing, None
        predicted = await self.predict(routing, request.stream)
        if predicted is None:
            return routing, None
        return await self._apply(routing, request, admission, predicted)

    async def _apply(
        self, routing: Routing, request: ChatRequest, admission: RouteAdmission, predicted: Prediction
    ) -> tuple[Routing, OverloadNote | None]:
        """The route's action for the request's class, when the prediction is over the objective."""
        objective = admission.first_byte_seconds
        if predicted.first_byte_seconds <= objective:
            return routing, None
        route = routing.target.route
        reason = (
            f"{route} first byte in {predicted.first_byte_seconds:.1f} s over its {objective:g} s objective"
            f" ({predicted.deployment} queue {predicted.wait_seconds:.1f} s)"
        )
        action = getattr(admission, routing.priority)
        if action == "shed":
            return routing, OverloadNote("shed", reason, max(1.0, predicted.wait_seconds))
        if isinstance(action, Downgrade):
            lower = self._decide.downgrade(routing, action.downgrade, request)
            alternative = await self.predict(lower, request.stream)
            if alternative is None or alternative.first_byte_seconds < predicted.first_byte_seconds:
                return lower, OverloadNote("downgraded", f"{reason}; sent to {action.downgrade}")
            reason += f"; {action.downgrade} is no sooner"
        if action == "defer" or routing.priority == DEFERRABLE:
            return routing, OverloadNote("deferred", f"{reason}; waits for spare capacity")
        if predicted.wait_seconds == 0:
            return routing, None  # no queue: the upstream itself is slower than the objective
        return routing, OverloadNote("queued", reason)


def _admission_of(routing: Routing) -> RouteAdmission | None:
    route = routing.policy.policy.routes.get(routing.target.route)
    return route.admission if route is not None else None

"""Every deployment's gate, for those that declare a capacity (`config.Capacity`; a managed local
model always has one): what the executor takes a place in before each call, and what admission control
and explain read."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.capacity.gate import CapacityGate, LocalGate, ServiceTime
from gateway.config import GatewayConfig


class Capacity:
    """Deployment name → its gate; a deployment without a capacity limit has none (no cost at all)."""

    def __init__(self, gates: Mapping[str, CapacityGate]) -> None:
        self._gates = dict(gates)
        # Recent upstream first-byte times of the limited deployments, by (deployment, streamed): with
        # the predicted queue wait, when a new request's first byte would come.
        self._first_byte: dict[tuple[str, bool], ServiceTime] = {}

    def gate(self, deployment: str) -> CapacityGate | None:
        return self._gates.get(deployment)

    def observe_first_byte(self, deployment: str, stream: bool, seconds: float) -> None:
        """An answer from a limited deployment came after `seconds` upstream (a stream: its first event)."""
        if deployment not in self._gates:
            return
        times = self._first_byte.get((deployment, stream))
        if times is None:
            times = self._first_byte[(deployment, stream)] = ServiceTime()
        times.add(seconds)

    def first_byte_seconds(self, deployment: str, stream: bool) -> float:
        """The deployment's recent mean upstream first-byte time (0 before any answer)."""
        times = self._first_byte.get((deployment, stream))
        return times.mean if times is not None else 0.0

    @property
    def gates(self) -> Mapping[str, CapacityGate]:
        return self._gates

    async def aclose(self) -> None:
        for gate in self._gates.values():
            await gate.aclose()


class NoCapacityLimits(Capacity):
    """No deployment has a limit (tests and tools that build an executor by hand)."""

    def __init__(self) -> None:
        super().__init__({})


def local_gates(config: GatewayConfig) -> dict[str, LocalGate]:
    """This process's own gate for every deployment with a capacity, as its configuration says."""
    gates: dict[str, LocalGate] = {}
    for name, deployment in config.deployments.items():
        capacity = deployment.effective_capacity
        if capacity is not None:
            gates[name] = LocalGate(
                name, capacity.max_concurrency, capacity.queue, capacity.ageing_seconds,
                capacity.deferred_queue,
            )  # fmt: skip
    return gates


def local_capacity(config: GatewayConfig) -> Capacity:
    """Gates kept by this process alone: the embedded default, one replica."""
    return Capacity(local_gates(config))

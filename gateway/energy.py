"""Estimated energy per request, in watt-hours, beside its cost: what the deployment used, and what the
policy's reference route would have used for the same tokens (energy saved, like money saved).

Two ways to estimate, per deployment (`config.Energy`):
- **by tokens**: `wh_per_1k_input_tokens` and `wh_per_1k_output_tokens`. A remote deployment without
  figures of its own gets the defaults below; a deployment with neither is unknown (None, never 0).
- **by CPU time**, for the managed local model: its server's CPU seconds (user + system, from
  `/proc/<pid>/stat`) at `cpu_watts` per busy core. The server runs one request at a time (its
  capacity is 1), so the CPU it used between the end of one request and the end of the next is that
  request's. Each such reading also updates the deployment's running Wh per 1,000 tokens, which prices
  it as a reference route.

Defaults and where they come from (estimates, not measurements: set your own where you know better):
- remote frontier models: 0.24 Wh per 1k input tokens and 0.6 Wh per 1k output tokens, from Epoch AI,
  "How much energy does ChatGPT use?" (Josh You, February 2025): about 0.3 Wh for a GPT-4o query with
  ~500 output tokens, and about 2.5 Wh for one with a 10k-token input. Google's August 2025 figure for
  a median Gemini Apps text prompt, 0.24 Wh, is of the same order.
- CPU: 7 W per busy core, about a server CPU's rated power over its cores (AMD EPYC 7763: 280 W for 64
  cores, 4.4 W; Intel Xeon Platinum 8380: 270 W for 40 cores, 6.8 W), rounded up for memory and the
  rest of the machine.
- the gateway's own embedder: 0.0004 Wh per 1k input tokens (7 W for the ~0.2 s of one core it takes
  to embed 1k tokens here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config import Deployment, Energy
from gateway.wire import Usage

REMOTE_WH_PER_1K_INPUT = 0.24
REMOTE_WH_PER_1K_OUTPUT = 0.6
CPU_WATTS_PER_CORE = 7.0
EMBEDDER_WH_PER_1K_INPUT = 0.0004

# The managed local model server's CPU seconds so far (None while it does not run).
CpuClock = Callable[[], float | None]


@dataclass(frozen=True, slots=True)
class TokenRates:
    input_per_1k: float
    output_per_1k: float

    def wh(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


@dataclass(slots=True)
class _CpuMeter:
    clock: CpuClock
    watts: float
    last: float | None = None
    # Running totals, for the deployment's Wh per 1k tokens as a reference route.
    wh_total: float = 0.0
    tokens_total: int = 0

    def start(self) -> None:
        """Before a call: the first one since start (or a restart) needs a reading to count from."""
        if self.last is None:
            self.last = self.clock()

    def read(self, tokens: int) -> float | None:
        now = self.clock()
        if now is None:
            return None
        before, self.last = self.last, now
        if before is None or now < before:  # no reading before the call, or a restarted server
            return None
        wh = (now - before) * self.watts / 3600
        self.wh_total += wh
        self.tokens_total += tokens
        return wh

    def rates(self) -> TokenRates | None:
        if self.tokens_total == 0:
            return None
        per_1k = self.wh_total * 1000 / self.tokens_total
        return TokenRates(per_1k, per_1k)


def token_rates(deployment: Deployment) -> TokenRates | None:
    """A deployment's Wh per 1k tokens: its own figures, else the defaults for its kind."""
    energy = deployment.energy or Energy()
    default_in: float | None
    default_out: float | None
    if deployment.provider == "local-embedder":
        default_in, default_out = EMBEDDER_WH_PER_1K_INPUT, 0.0
    elif deployment.provider == "managed-local":
        default_in = default_out = None
    else:
        default_in, default_out = REMOTE_WH_PER_1K_INPUT, REMOTE_WH_PER_1K_OUTPUT
    rate_in = energy.wh_per_1k_input_tokens if energy.wh_per_1k_input_tokens is not None else default_in
    rate_out = energy.wh_per_1k_output_tokens if energy.wh_per_1k_output_tokens is not None else default_out
    if rate_in is None or rate_out is None:
        return None
    return TokenRates(rate_in, rate_out)


class EnergyBook:
    """Every deployment's way to estimate a request's energy."""

    def __init__(self, deployments: Mapping[str, Deployment], local_cpu: CpuClock | None = None) -> None:
        self._rates: dict[str, TokenRates] = {}
        self._meters: dict[str, _CpuMeter] = {}
        for name, deployment in deployments.items():
            rates = token_rates(deployment)
            if rates is not None:
                self._rates[name] = rates
            elif deployment.provider == "managed-local" and local_cpu is not None:
                watts = (deployment.energy.cpu_watts if deployment.energy else None) or CPU_WATTS_PER_CORE
                self._meters[name] = _CpuMeter(local_cpu, watts)

    def calling(self, deployment: str) -> None:
        """A call to `deployment` is about to be made (a CPU-metered one takes its first reading)."""
        meter = self._meters.get(deployment)
        if meter is not None:
            meter.start()

    def wh(self, deployment: str | None, usage: Usage | None) -> float | None:
        """The estimated energy of one answer (None: unknown)."""
        if deployment is None or usage is None:
            return None
        rates = self._rates.get(deployment)
        if rates is not None:
            return rates.wh(usage.prompt_tokens, usage.completion_tokens)
        meter = self._meters.get(deployment)
        if meter is not None:
            return meter.read(usage.prompt_tokens + usage.completion_tokens)
        return None

    def reference_wh(self, deployment: str | None, usage: Usage | None) -> float | None:
        """What `deployment` (the reference route's first) would have used for the same tokens."""
        if deployment is None or usage is None:
            return None
        rates = self._rates.get(deployment)
        if rates is None and deployment in self._meters:
            rates = self._meters[deployment].rates()
        return rates.wh(usage.prompt_tokens, usage.completion_tokens) if rates is not None else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux `/proc`; None when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / ticks

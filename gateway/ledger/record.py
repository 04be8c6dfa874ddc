"""One spend record per answered (or failed) request, whatever API it came through: who asked, where
it went, what it used, what it cost, what the reference route would have cost, and how long it took.
Never the prompt or the answer, unless a policy turns body logging on (then redacted, see `redact`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

CacheOutcome = Literal["miss", "exact", "semantic"]


# Not slotted: orjson serialises a plain dataclass through its __dict__ four times faster, and this is
# serialised on every request (the spool); it is built faster too.
@dataclass
class SpendRecord:
    # Unique per record, made by the gateway (the request id may be the client's own, and repeat).
    id: str
    request_id: str
    # Unix time (seconds) the request arrived.
    at: float
    team: str | None
    key_id: str | None
    policy: str | None
    route: str | None
    rule: str | None
    deployment: str | None
    # The model the deployment names upstream (what finance recognises on an invoice).
    model: str | None
    stream: bool
    status: int
    # The class of error (`rate_limit_exceeded`, `upstream_timeout`, ...) when status is not 200.
    error: str | None = None
    cache: CacheOutcome = "miss"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # True when the upstream sent no usage and the gateway counted the tokens itself.
    estimated: bool = False
    # USD; None when a price is unknown (never a silent $0).
    cost_usd: float | None = None
    # What the policy's reference route would have charged for the same tokens.
    reference_usd: float | None = None
    # Milliseconds: the whole request, until the first byte went to the client, inside upstreams,
    # and the gateway's own share (total minus upstream).
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    upstream_ms: float | None = None
    overhead_ms: float | None = None
    signals: Mapping[str, Any] = field(default_factory=dict)
    # The request and answer text, redacted; only when the policy turns body logging on.
    body: str | None = None
    # The inbound API the request came through (`chat.completions`, `responses`, `messages`, ...).
    api: str = "chat.completions"
    # Its priority class, how long it waited for a place at a deployment with a capacity limit, and
    # what admission control did when its route was over its objective (`downgraded: …`, `shed: …`).
    priority: str = "interactive"
    queue_ms: float = 0.0
    admission: str | None = None
    # Estimated watt-hours (`gateway/energy.py`), and what the reference route would have used;
    # None when unknown.
    energy_wh: float | None = None
    reference_energy_wh: float | None = None

    @property
    def saved_usd(self) -> float | None:
        if self.cost_usd is None or self.reference_usd is None:
            return None
        return self.reference_usd - self.cost_usd

    @property
    def saved_energy_wh(self) -> float | None:
        if self.energy_wh is None or self.reference_energy_wh is None:
            return None
        return self.reference_energy_wh - self.energy_wh

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpendRecord:
        return cls(**data)

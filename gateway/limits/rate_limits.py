"""Requests and tokens per minute, per team and per key, as a policy writes them; which rate lines a
request counts against. The counting (sliding window, in-process or in Redis) is `rate_counters`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.limits.rate_counters import RateLine

EVERY = "*"


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: Annotated[int | None, Field(gt=0)] = None
    # Prompt tokens count when the request is admitted, completion tokens once they are known.
    tokens_per_minute: Annotated[int | None, Field(gt=0)] = None


class RateLimits(BaseModel):
    """`teams` by team name and `keys` by key id; `*` applies to each one without its own entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: dict[str, RateLimit] = {}
    keys: dict[str, RateLimit] = {}
    # When the counters cannot be reached (Redis down): `open` lets each replica count on its own (so
    # N replicas admit up to N times the limit; logged), `closed` refuses those a limit applies to with a
    # 503 until the counters are back.
    when_unavailable: Literal["open", "closed"] = "open"

    @property
    def empty(self) -> bool:
        return not (self.teams or self.keys)


@dataclass(frozen=True, slots=True)
class RateCheck:
    requests: tuple[RateLine, ...]
    tokens: tuple[RateLine, ...]

    @property
    def empty(self) -> bool:
        return not (self.requests or self.tokens)


NO_LIMITS = RateCheck((), ())


def rate_lines(limits: RateLimits, team: str | None, key: str | None) -> RateCheck:
    if limits.empty:
        return NO_LIMITS
    requests: list[RateLine] = []
    tokens: list[RateLine] = []
    for kind, name, table in (("team", team, limits.teams), ("key", key, limits.keys)):
        if name is None:
            continue
        limit = table.get(name) or table.get(EVERY)
        if limit is None:
            continue
        for lines, per_minute, what, suffix in (
            (requests, limit.requests_per_minute, "requests", "rpm"),
            (tokens, limit.tokens_per_minute, "tokens", "tpm"),
        ):
            if per_minute is not None:
                line = f"{what} per minute"
                lines.append(
                    RateLine(
                        f"{kind} {name} {line}",
                        f"{kind}:{name}:{suffix}",
                        per_minute,
                        metric=f"{kind} {line}",
                    )
                )
    return RateCheck(tuple(requests), tuple(tokens))

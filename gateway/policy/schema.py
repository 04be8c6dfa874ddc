"""The routing policy as admins write it in `policies/*.yaml`: strict models, unknown keys are errors.

A policy names routes, defines signals (per-request features), and lists rules in priority order:
the first rule whose condition holds picks the route. Golden test cases live in the same file.
The models here only describe the file; `policy.compile` checks references and builds the evaluators.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from gateway.capacity.priority import PriorityName
from gateway.limits.budgets import Budgets
from gateway.limits.rate_limits import RateLimits


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---- routes -----------------------------------------------------------------------------------


class RoutePrice(Strict):
    """USD per million tokens, overriding the deployments' own prices on this route."""

    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]


class Downgrade(Strict):
    """Send the request to another route instead (a cheaper tier with room, or one that only answers
    from the cache)."""

    downgrade: str


# What happens to a request of one class when the route would miss its first-byte objective: wait for
# its turn anyway (`queue`), wait in spare capacity without the objective (`defer`, deferrable only),
# another route (`downgrade`), or refused now with 429 and the predicted wait as Retry-After (`shed`).
OverObjective = Literal["queue", "defer", "shed"] | Downgrade


class RouteAdmission(Strict):
    """Admission control against a latency objective (`path/overload.py`): before a request is sent,
    its wait is predicted from its first deployment's queue and recent service times; when its first
    byte would come later than `first_byte_seconds`, its class's action applies. Interactive requests
    are never shed: they queue, ahead of every other class, or are downgraded."""

    first_byte_seconds: Annotated[float, Field(gt=0)]
    interactive: Literal["queue"] | Downgrade = "queue"
    standard: Literal["queue", "shed"] | Downgrade = "queue"
    deferrable: OverObjective = "defer"


class Route(Strict):
    """Either deployments in fallback order, or a weighted split between deployments (A/B, canary):
    one is picked by weight, the others follow as fallbacks."""

    deployments: Annotated[list[str], Field(min_length=1)] | None = None
    split: dict[str, Annotated[float, Field(gt=0)]] | None = None
    price: RoutePrice | None = None
    admission: RouteAdmission | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Route:
        if (self.deployments is None) == (self.split is None):
            raise ValueError("a route has either 'deployments' (fallback order) or 'split' (weights)")
        if self.split is not None and not self.split:
            raise ValueError("'split' lists no deployments")
        return self


# ---- signals ----------------------------------------------------------------------------------

TextScope = Literal["system", "user", "last_user", "all"]


class SizeSignal(Strict):
    """A count: prompt tokens (tiktoken), number of messages, or the requested max_tokens."""

    kind: Literal["size"]
    of: Literal["prompt_tokens", "messages", "max_tokens"]


class FeatureSignal(Strict):
    """Whether the request uses tools, images, JSON mode or streaming."""

    kind: Literal["feature"]
    of: Literal["tools", "images", "json_mode", "stream"]


class KeywordSignal(Strict):
    """True when any of the words or phrases appears (whole words) in the chosen text."""

    kind: Literal["keywords"]
    words: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    scope: TextScope = Field("all", alias="in")
    case_sensitive: bool = False


class RegexSignal(Strict):
    """True when the regular expression matches somewhere in the chosen text."""

    kind: Literal["regex"]
    pattern: Annotated[str, Field(min_length=1)]
    scope: TextScope = Field("all", alias="in")
    case_sensitive: bool = True


class MetadataSignal(Strict):
    """Who is asking: the caller's team, key id, role, the request's `user` field, or its tags
    (from the `x-gateway-tags` header)."""

    kind: Literal["metadata"]
    of: Literal["team", "key", "role", "user", "tags"]


Examples = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class SemanticSignal(Strict):
    """The category whose example prompts are nearest the request's text by embedding (local
    all-MiniLM-L6-v2); null when no category is at least `min_similarity` alike."""

    kind: Literal["semantic"]
    categories: Annotated[
        dict[str, Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]],
        Field(min_length=1),
    ]
    scope: TextScope = Field("last_user", alias="in")
    min_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.5


class LearnedScoreSignal(Strict):
    """The probability that the strong model is needed for the request's last user turn, from the learned
    router (`gateway router train`), over the embedding the policy and the cache share; null when the
    request has no user text. Needs the local embedder."""

    kind: Literal["learned_score"]
    # The router artifact; the one shipped with the gateway when unset.
    model: Annotated[str, Field(min_length=1)] | None = None
    # The guard: refuse the policy unless the model's card (`gateway router retrain`) shows it beat
    # random routing on held-out recorded traffic by at least this much APGR (and with p < 0.05).
    beats_random_by: Annotated[float, Field(ge=0, le=0.5)] | None = None


class BudgetSignal(Strict):
    """The largest fraction already spent of the caller's budgets (team and key, day and month), as
    this replica last saw it; null when the caller has no budget."""

    kind: Literal["budget_spent"]


class PrioritySignal(Strict):
    """The request's priority class: `interactive`, `standard` or `deferrable` (`policy.priorities`)."""

    kind: Literal["priority"]


class RouteHealthSignal(Strict):
    """Whether a route has a deployment that can take requests now."""

    kind: Literal["route_healthy"]
    route: str


Signal = Annotated[
    SizeSignal
    | FeatureSignal
    | KeywordSignal
    | RegexSignal
    | MetadataSignal
    | SemanticSignal
    | LearnedScoreSignal
    | BudgetSignal
    | PrioritySignal
    | RouteHealthSignal,
    Field(discriminator="kind"),
]

# ---- conditions -------------------------------------------------------------------------------

OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains")
Scalar = str | int | float | bool | None


class Compare(Strict):
    """`signal` compared with exactly one operator, e.g. `{signal: prompt_tokens, lt: 200}`."""

    signal: str
    eq: Scalar = None
    ne: Scalar = None
    lt: int | float | None = None
    lte: int | float | None = None
    gt: int | float | None = None
    gte: int | float | None = None
    in_: list[Scalar] | None = Field(None, alias="in")
    not_in: list[Scalar] | None = None
    contains: Scalar = None

    @model_validator(mode="after")
    def _one_operator(self) -> Compare:
        given = [name for name in self.operators_set()]
        if len(given) != 1:
            raise ValueError(f"a comparison needs exactly one operator of {', '.join(OPERATORS)}")
        return self

    def operators_set(self) -> list[str]:
        return ["in" if field == "in_" else field for field in self.model_fields_set if field != "signal"]

    @property
    def operator(self) -> str:
        return self.operators_set()[0]

    @property
    def operand(self) -> Any:
        return getattr(self, "in_" if self.operator == "in" else self.operator)


class AllOf(Strict):
    all_: Annotated[list[Condition], Field(min_length=1)] = Field(alias="all")


class AnyOf(Strict):
    any_: Annotated[list[Condition], Field(min_length=1)] = Field(alias="any")


class NotOf(Strict):
    not_: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("all", "any", "not", "signal"):
            if key in value:
                return key
        return None
    for cls, key in ((AllOf, "all"), (AnyOf, "any"), (NotOf, "not"), (Compare, "signal")):
        if isinstance(value, cls):
            return key
    return None


Condition = Annotated[
    Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")]
    | Annotated[Compare, Tag("signal")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition",
        custom_error_message=(
            "a condition is one of {all: [...]}, {any: [...]}, {not: ...} or {signal: ..., <op>: ...}"
        ),
    ),
]

# ---- rules ------------------------------------------------------------------------------------


class CacheDirective(Strict):
    """Answer this rule's repeated requests from the cache. Entries belong to the caller's team unless
    `namespace` names a namespace shared by every team the rule matches."""

    enabled: bool = True
    # Also answer questions that mean the same as a cached one (the semantic layer): the least
    # probability of "same intent" the verifier must give. `gateway cache calibrate` recommends one for
    # a target precision. Unset: exact matches only.
    similarity: Annotated[float, Field(gt=0, le=1)] | None = None
    # Or the tolerated share of semantic hits that answer a different question: the cache's judge
    # (`cache/pair_judge.py`: cosine and verifier together) accepts a hit at the threshold measured to
    # keep that rate on held-out pairs of every kind of text it was calibrated on. Takes precedence
    # over `similarity`.
    max_error: Annotated[float, Field(gt=0, le=0.5)] | None = None
    # Share of semantic hits checked live: the route is called anyway and its answer compared with the
    # cached one, so the cache's real precision on this traffic shows in the metrics.
    verify_sample: Annotated[float, Field(ge=0, le=1)] = 0.0
    ttl_seconds: Annotated[int, Field(gt=0)] | None = None
    namespace: Annotated[str, Field(min_length=1)] | None = None
    # Cache requests with any temperature, not only temperature 0.
    any_temperature: bool = False
    # Keep answers that call tools, or that were cut at max_tokens.
    tool_calls: bool = False
    truncated: bool = False

    @property
    def semantic(self) -> bool:
        """Whether questions that mean the same as a cached one are answered too."""
        return self.similarity is not None or self.max_error is not None


class Overrides(Strict):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] | None = None


class Rule(Strict):
    name: Annotated[str, Field(min_length=1)]
    when: Condition
    route: str
    cache: CacheDirective | None = None
    overrides: Overrides | None = None
    # Send a copy to this route, record its answer, never return it.
    shadow: str | None = None
    # The share of the rule's requests copied (by request id, so the same request always is or is not).
    shadow_share: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Label each copied request for the router: whether the two answers agree, read off closed-form
    # answers (a choice, a number, code), else asked of `shadow_judge` (a route) when one is named.
    shadow_labels: bool = False
    shadow_judge: str | None = None


# ---- golden cases -----------------------------------------------------------------------------


class GoldenRequest(Strict):
    """A request as the gateway would see it: the OpenAI body plus who sent it."""

    body: dict[str, Any]
    team: str | None = None
    key: str | None = None
    role: str | None = None
    tags: list[str] = []
    # Values for signals the test cannot compute (learned score, budget, health).
    signals: dict[str, Scalar] = {}


class Expectation(Strict):
    route: str
    # The rule that should decide; "default" when no rule matches.
    rule: str


class GoldenCase(Strict):
    name: Annotated[str, Field(min_length=1)]
    request: GoldenRequest
    expect: Expectation


# ---- priorities -------------------------------------------------------------------------------


class Priorities(Strict):
    """Each request's class (`capacity/priority.py`): the key's default, else the team's, else `default`.
    A client may ask for another with `x-gateway-priority` (or OpenAI's `service_tier: flex`, which is
    deferrable): a lower class always, a higher one only when `clients_may_raise`."""

    default: PriorityName = "interactive"
    teams: dict[str, PriorityName] = {}
    keys: dict[str, PriorityName] = {}
    clients_may_raise: bool = False


# ---- the policy -------------------------------------------------------------------------------


class Policy(Strict):
    description: str = ""
    routes: Annotated[dict[str, Route], Field(min_length=1)]
    signals: dict[str, Signal] = {}
    rules: list[Rule] = []
    default_route: str
    # Where a request goes when every deployment of its route is unavailable.
    fallback_route: str | None = None
    # What "sending everything to the frontier" would cost: savings are measured against this route.
    reference_route: str | None = None
    # Spend caps per team and key (USD per day and month), and requests/tokens per minute.
    budgets: Budgets = Budgets()
    rate_limits: RateLimits = RateLimits()
    priorities: Priorities = Priorities()
    # Keep the prompt and answer text in the spend ledger, with e-mail addresses, API keys and card
    # numbers redacted. Off by default: the ledger holds no text at all.
    log_bodies: bool = False
    # Where `POST /v1/embeddings` with `model: auto` goes (the rules decide chat requests only).
    embeddings_route: str | None = None
    # Answer repeated embeddings requests (the same inputs, encoding and dimensions on the same route)
    # from the cache; exact matches only.
    embeddings_cache: CacheDirective | None = None
    # Model names clients send, mapped to `auto` (the rules decide), a route or a deployment; `*`
    # matches any run of characters, e.g. `claude-*: auto` for Claude Code (`policy/aliases.py`).
    model_aliases: dict[Annotated[str, Field(min_length=1, max_length=200)], str] = {}
    tests: list[GoldenCase] = []


DEFAULT_RULE = "default"

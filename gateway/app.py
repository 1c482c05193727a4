"""The composition root: the only module that knows the concrete classes.

`create_app(settings)` returns the ASGI app; its lifespan builds the
catalog, database, writer, meter, providers and pipeline into one
`Gateway` state object, and on shutdown lets in-flight replies finish and
commits what is queued before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.accounts.auth import KeyCache
from gateway.accounts.byo import ByoKeys
from gateway.accounts.keyring import Keyring
from gateway.accounts.plans import Plans
from gateway.accounts.recharge import Recharges
from gateway.accounts.thresholds import Thresholds
from gateway.accounts.workspaces import Accounts, allotment_of
from gateway.catalog import Catalog, load
from gateway.clock import Clock, SystemClock
from gateway.crashpoints import crasher
from gateway.dashboard.sessions import Sessions
from gateway.edge.asgi import GatewayApp
from gateway.edge.failures import failure
from gateway.edge.routes import ROUTES
from gateway.flow.breaker import Breakers
from gateway.flow.pipeline import Pipeline
from gateway.idempotency.service import Idempotency
from gateway.idempotency.sql import LedgerCheck, SqlIdempotencyStore
from gateway.idempotency.store import IdempotencyStore
from gateway.ledger.export import LedgerExport
from gateway.ledger.recorder import Recorder
from gateway.ledger.responses import LedgerResponses
from gateway.ledger.spool import Spool, keep_replaying, ledger_sink
from gateway.ledger.usage import Usage
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import HasOutbox, KnowsCharges, Meter, Syncs
from gateway.metering.memory import MemoryMeter
from gateway.metering.sql import SqlMeter
from gateway.observability.logs import RequestLog, RequestObserver, RequestRecord
from gateway.observability.logs import configure as configure_logs
from gateway.observability.metrics import Metrics, holds_counter
from gateway.providers.litellm_provider import LitellmProvider
from gateway.providers.local import LocalProvider
from gateway.providers.registry import Providers
from gateway.providers.relay import RelayProvider
from gateway.ratelimit.limiter import LimitStore, MemoryLimits, RateLimiter
from gateway.services import Admin, Inference, Ops, Reads, Services
from gateway.settings import Settings
from gateway.storage.database import create_schema, is_sqlite, make_engine, normalise_url
from gateway.webhooks.delivery import Dispatcher
from gateway.webhooks.registry import Webhooks

log = logging.getLogger("bookbag")


@dataclass
class Gateway:
    """Everything the process built, for its lifecycle (background tasks, closing in
    order) and for tests; endpoints receive `services` instead."""

    settings: Settings
    catalog: Catalog
    clock: Clock
    engine: Engine
    writer: GroupWriter
    accounts: Accounts
    keys: KeyCache
    meter: Meter
    pipeline: Pipeline
    usage: Usage
    providers: Providers
    metrics: Metrics
    request_log: RequestLog
    sessions: Sessions
    export: LedgerExport
    limiter: RateLimiter
    byo: ByoKeys
    plans: Plans
    recharges: Recharges
    webhooks: Webhooks
    thresholds: Thresholds
    dispatcher: Dispatcher
    started: int = field(default_factory=lambda: int(time.time()))
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    idempotency: Idempotency | None = None
    spool: Spool | None = None
    _services: Services | None = field(default=None, repr=False)

    def observe(self, record: RequestRecord) -> None:
        """A request has ended: count it and write its log line."""
        self.metrics.observe(record)
        self.request_log.emit(record)

    @property
    def services(self) -> Services:
        """What the endpoints receive (gateway/services.py), built once."""
        if self._services is None:
            self._services = Services(
                settings=self.settings,
                inference=Inference(self.pipeline, self.keys, self.catalog, self.started),
                admin=Admin(self.accounts, self.meter, self.plans, self.byo, self.recharges,
                            self.thresholds, self.webhooks),
                reads=Reads(self.meter, self.usage, self.export, self.clock, self.catalog),
                ops=Ops(self.engine, self.meter, self.metrics, self.spool),
                sessions=self.sessions,
            )
        return self._services


def meter_kind(settings: Settings) -> str:
    if settings.meter != "auto":
        return settings.meter
    if settings.redis_url:
        return "redis"
    return "memory" if is_sqlite(normalise_url(settings.database_url)) else "sql"


def build_meter(settings: Settings, engine: Engine, writer: GroupWriter, clock: Clock,
                catalog: Catalog) -> Meter:
    kind = meter_kind(settings)

    def allotment(plan: str, custom: int | None) -> int:
        return allotment_of(catalog, plan, custom)

    if kind == "memory":
        return MemoryMeter(engine, writer, clock, allotment, hold_ttl=settings.hold_ttl,
                           sync_interval=settings.sync_interval,
                           sweep_interval=settings.sweep_interval)
    if kind == "sql":
        return SqlMeter(engine, clock, allotment, hold_ttl=settings.hold_ttl,
                        sweep_interval=settings.sweep_interval, writer=writer)
    if kind == "redis" and settings.redis_url:
        # Imported here: redis costs ~10 MB and ~0.3 s of startup to a gateway without it.
        from gateway.metering.outbox import OutboxConsumer
        from gateway.metering.redis import RedisMeter
        from gateway.storage.redis import connect as redis_connect

        # The consumer blocks on its streams for 0.5 s: its reads may take that much longer.
        outbox = OutboxConsumer(redis_connect(settings.redis_url, timeout=settings.redis_timeout,
                                              read_timeout=settings.redis_timeout + 0.5),
                                engine, block=0.5)
        return RedisMeter(redis_connect(settings.redis_url, timeout=settings.redis_timeout),
                          engine, clock, allotment, hold_ttl=settings.hold_ttl,
                          sync_interval=settings.sync_interval,
                          sweep_interval=settings.sweep_interval,
                          breaker=settings.redis_timeout, outbox=outbox,
                          wait_replicas=settings.redis_wait_replicas,
                          wait_timeout=settings.redis_wait_timeout)
    raise NotImplementedError(f"meter {kind!r} is not available in this build")


def build_idempotency(settings: Settings, engine: Engine, writer: GroupWriter,
                      clock: Clock, meter: Meter | None = None) -> Idempotency:
    """Idempotency keys live in Redis when there is one (shared by every process), else in
    the database; crash recovery asks the SQL ledger whether a request was charged."""
    charged: Callable[[str, str], Awaitable[bool]] = LedgerCheck(engine)
    if isinstance(meter, KnowsCharges):
        # A settled entry reaches SQL through the outbox: ask the meter (outbox, then SQL).
        charged = meter.charged
    store: IdempotencyStore
    if settings.redis_url:
        from gateway.idempotency.redis import RedisIdempotencyStore

        store = RedisIdempotencyStore(settings.redis_url, timeout=settings.redis_timeout)
    else:
        store = SqlIdempotencyStore(writer, postgres=engine.dialect.name == "postgresql")
    return Idempotency(store, clock, charged, retention=settings.idempotency_retention,
                       lease=settings.hold_ttl, sweep_interval=settings.sweep_interval)


async def build_gateway(settings: Settings, clock: Clock | None = None,
                        catalog: Catalog | None = None) -> Gateway:
    clock = clock or SystemClock()
    catalog = catalog or load(settings.pricing_path)
    configure_logs(settings.log_level, settings.log_json)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    await asyncio.to_thread(create_schema, engine)
    writer = GroupWriter(engine)
    writer.start()
    meter = build_meter(settings, engine, writer, clock, catalog)
    await meter.start()
    accounts = Accounts(engine, catalog, clock)
    providers = Providers(RelayProvider(), LocalProvider(), LitellmProvider())
    idempotency = build_idempotency(settings, engine, writer, clock, meter)
    await idempotency.start()
    spool = Spool(settings.spool_file())
    keyring = Keyring(settings.secret_key)
    byo = ByoKeys(engine, keyring, clock, ttl=settings.key_cache_ttl, providers=frozenset(
        {"openai", "anthropic"} | {m.provider for m in catalog.models.values() if m.byo}))
    webhooks = Webhooks(engine, keyring, clock, allow_private=settings.webhook_allow_private)
    recharges = Recharges(engine, clock, webhooks)
    thresholds = Thresholds(engine, clock, meter, recharges, webhooks, ttl=settings.key_cache_ttl)
    dispatcher = Dispatcher(engine, keyring, clock, interval=settings.webhook_interval,
                            backoff=settings.webhook_backoff,
                            max_attempts=settings.webhook_max_attempts,
                            timeout=settings.webhook_timeout,
                            allow_private=settings.webhook_allow_private)
    await dispatcher.start()
    limits: LimitStore = MemoryLimits()
    if settings.redis_url:
        from gateway.ratelimit.redis import RedisLimits

        limits = RedisLimits(settings.redis_url, timeout=settings.redis_timeout)
    limiter = RateLimiter(catalog, limits, clock)
    breakers = Breakers(clock, failures=settings.breaker_failures,
                        cooldown=settings.breaker_cooldown)
    metrics = Metrics(holds_counter(meter, engine), breakers.states)
    pipeline = Pipeline(settings=settings, catalog=catalog, clock=clock, meter=meter,
                        recorder=Recorder(writer, spool=spool), providers=providers,
                        limiter=limiter, idempotency=idempotency, stored_byo_key=byo.lookup,
                        after_charge=thresholds.after_charge,
                        responses=LedgerResponses(engine),
                        breakers=breakers, on_fallback=metrics.fallback,
                        crash=crasher(settings.crash_at))  # test-only; a no-op unless set
    metrics.feed_from("embedded", writer)
    if isinstance(meter, HasOutbox):
        metrics.feed_from("redis", meter.outbox)
    gw = Gateway(
        settings=settings, catalog=catalog, clock=clock, engine=engine, writer=writer,
        accounts=accounts, keys=KeyCache(accounts.caller, clock, settings.key_cache_ttl),
        meter=meter, pipeline=pipeline, usage=Usage(engine, clock), providers=providers,
        metrics=metrics, request_log=RequestLog(settings.log_json),
        sessions=Sessions(engine, clock), export=LedgerExport(engine),
        idempotency=idempotency, spool=spool, limiter=limiter,
        byo=byo, recharges=recharges, webhooks=webhooks,
        plans=Plans(engine, catalog, clock,
                    # meters that cache plans re-read them
                    refresh=meter.sync if isinstance(meter, Syncs) else None),
        thresholds=thresholds, dispatcher=dispatcher,
    )
    gw.tasks.append(asyncio.create_task(
        keep_replaying(spool, ledger_sink(engine), settings.sweep_interval), name="spool-replay"))
    if settings.litellm_preload and any(providers.uses_litellm(m)
                                        for m in catalog.models.values()):
        # litellm takes ~1-2 s and ~120 MB to import: by default a litellm route's first
        # request pays it; BOOKBAG_LITELLM_PRELOAD loads it after startup, off the relay's path.
        gw.tasks.append(asyncio.create_task(providers.litellm.warm(), name="litellm-warm"))
    return gw


async def close_gateway(gw: Gateway) -> None:
    for task in gw.tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    if gw.idempotency is not None:
        await gw.idempotency.close()
    await gw.thresholds.close()
    await gw.dispatcher.close()
    await gw.limiter.close()
    await gw.meter.close()
    await gw.providers.close()
    await gw.writer.close()
    # Database calls of cancelled background tasks may still run in worker threads: let them
    # return their connections before the pool is disposed (else they leak, unclosed).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(gw.loop.shutdown_default_executor()), 10)
    gw.engine.dispose()


def _tune_gc() -> None:
    """What startup built lives as long as the process: move it out of the collector's
    sight (`gc.freeze`), and collect the young generation less often. Requests allocate
    many short-lived objects; with the default threshold (2,000) the collector ran every
    few requests (A/B, 64 in flight: -7 % CPU per JSON request, -16 % per stream)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def create_app(settings: Settings, *, clock: Clock | None = None,
               catalog: Catalog | None = None, tune_gc: bool = False) -> Starlette:
    """The ASGI app; `tune_gc` (the server process, not tests that build many apps in one
    process) freezes what startup built, see `_tune_gc`."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = await build_gateway(settings, clock, catalog)
        if tune_gc:
            _tune_gc()
        app.state.gateway = gw
        app.state.services = gw.services
        app.state.observe_request = gw.observe
        try:
            yield
        finally:
            await close_gateway(gw)

    return GatewayApp(
        failure=failure,
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[Middleware(RequestObserver)],
        exception_handlers={404: failure, 405: failure, Exception: failure},
    )

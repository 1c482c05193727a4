"""The composition root: the only module that knows the concrete classes.

`create_app(settings)` returns the ASGI app; its lifespan builds the
catalog, database, writer, meter, providers and pipeline into one
`Gateway` state object, and on shutdown lets in-flight replies finish and
commits what is queued before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import KeyCache
from gateway.catalog import Catalog, load
from gateway.clock import Clock, SystemClock
from gateway.database import create_schema, is_sqlite, make_engine, normalise_url, transaction
from gateway.endpoints.http import error_response
from gateway.endpoints.routes import ROUTES
from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.ledger.recorder import Recorder
from gateway.ledger.usage import Usage
from gateway.ledger.writer import GroupWriter
from gateway.metering.base import Meter
from gateway.metering.memory import MemoryMeter
from gateway.metering.sql import SqlMeter
from gateway.pipeline import Pipeline
from gateway.providers.litellm_provider import LitellmProvider
from gateway.providers.local import LocalProvider
from gateway.providers.registry import Providers
from gateway.providers.relay import RelayProvider
from gateway.settings import Settings
from gateway.workspaces import Accounts, allotment_of

log = logging.getLogger("bookbag")


@dataclass
class Gateway:
    """Everything a request needs, built once in the lifespan."""

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
    started: int = field(default_factory=lambda: int(time.time()))
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def readiness(self) -> dict[str, bool]:
        def ping() -> None:
            with transaction(self.engine) as (cur, _):
                cur.execute("SELECT 1")

        checks = {"local_model": True}
        try:
            await asyncio.wait_for(asyncio.to_thread(ping), 2.0)
            checks["database"] = True
        except Exception:
            checks["database"] = False
        return checks


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
                        sweep_interval=settings.sweep_interval)
    raise NotImplementedError(f"meter {kind!r} is not available in this build")


async def build_gateway(settings: Settings, clock: Clock | None = None,
                        catalog: Catalog | None = None) -> Gateway:
    clock = clock or SystemClock()
    catalog = catalog or load(settings.pricing_path)
    engine = make_engine(settings.database_url)
    await asyncio.to_thread(create_schema, engine)
    writer = GroupWriter(engine)
    writer.start()
    meter = build_meter(settings, engine, writer, clock, catalog)
    await meter.start()
    accounts = Accounts(engine, catalog, clock)
    providers = Providers(RelayProvider(), LocalProvider(), LitellmProvider())
    pipeline = Pipeline(settings=settings, catalog=catalog, clock=clock, meter=meter,
                        recorder=Recorder(writer), providers=providers)
    gw = Gateway(
        settings=settings, catalog=catalog, clock=clock, engine=engine, writer=writer,
        accounts=accounts, keys=KeyCache(accounts.caller, clock, settings.key_cache_ttl),
        meter=meter, pipeline=pipeline, usage=Usage(engine, clock), providers=providers,
    )
    if any(not m.relayed and m.provider != "local" for m in catalog.models.values()):
        # litellm takes seconds to import: load it after startup, off the relay's path.
        gw.tasks.append(asyncio.create_task(providers.litellm.warm(), name="litellm-warm"))
    return gw


async def close_gateway(gw: Gateway) -> None:
    for task in gw.tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    await gw.meter.close()
    await gw.providers.close()
    await gw.writer.close()
    gw.engine.dispose()


async def _not_found(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return error_response(MethodNotAllowed(f"Method {request.method} is not allowed on {path}."))
    if path.startswith("/v1/"):
        return error_response(NotFound(f"The route {path} is not supported by this gateway."))
    return error_response(NotFound(f"No route {path}."))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    error = GatewayError("The gateway failed to handle this request.")
    return error_response(error)


def create_app(settings: Settings, *, clock: Clock | None = None,
               catalog: Catalog | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = await build_gateway(settings, clock, catalog)
        app.state.gateway = gw
        try:
            yield
        finally:
            await close_gateway(gw)

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found, Exception: _server_error},
    )

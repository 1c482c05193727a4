"""Prometheus metrics, in a registry each gateway owns (no process-global registry).

    bookbag_requests_total{route, model, billing_mode, status}
    bookbag_request_duration_seconds{route}
    bookbag_credits_charged_total{model}
    bookbag_insufficient_credits_total                      402s
    bookbag_holds_in_flight                                 reservations not yet settled or voided
                                                            (memory: this process; sql, redis: all)
    bookbag_provider_latency_seconds{model}
    bookbag_gateway_overhead_seconds{route}                 request time minus provider time
    bookbag_ledger_write_lag_seconds{store}                 queued -> committed (embedded);
                                                            settled -> in SQL (redis outbox)
    bookbag_ledger_writes_total{store}
    bookbag_fallbacks_total{requested, answering, reason}   replies a fallback model answered;
                                                            reason: why the requested model
                                                            did not (flow/fallback.py)
    bookbag_model_breaker_state{model}                      0 closed, 1 half-open, 2 open
                                                            (this process; flow/breaker.py)

Labels are bounded: routes are the route table's templates, models the
catalog's ids; no workspace, key or agent ever becomes a label.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Engine

from gateway.metering.base import CommitFeed, CountsHolds, CountsHoldsRemotely
from gateway.observability.logs import RequestRecord
from gateway.storage.database import snapshot

log = logging.getLogger("bookbag.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HoldsCount = Callable[[], Awaitable[int]]
BreakerStates = Callable[[], dict[str, str]]  # model id -> closed | half_open | open
_BREAKER = {"closed": 0, "half_open": 1, "open": 2}


def holds_counter(meter: object, engine: Engine) -> HoldsCount:
    """How to count holds in flight: the meter's own count, else the SQL holds table."""
    if isinstance(meter, CountsHoldsRemotely):
        return meter.count_holds
    if isinstance(meter, CountsHolds):
        counts = meter

        async def in_memory() -> int:
            return counts.holds_in_flight()

        return in_memory

    def count() -> int:
        with snapshot(engine) as (cur, _):
            cur.execute("SELECT COUNT(*) FROM holds")
            return int(cur.fetchone()[0])

    async def in_sql() -> int:
        return await asyncio.to_thread(count)

    return in_sql


class Metrics:
    def __init__(self, holds: HoldsCount | None = None,
                 breakers: BreakerStates | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bookbag_requests", "HTTP requests by route, model, billing mode and status.",
                                ["route", "model", "billing_mode", "status"], registry=r)
        self.duration = Histogram("bookbag_request_duration_seconds", "Whole request time, to the last byte.",
                                  ["route"], buckets=_SLOW, registry=r)
        self.credits = Counter("bookbag_credits_charged", "Credits charged for replies.", ["model"],
                               registry=r)
        self.insufficient = Counter("bookbag_insufficient_credits",
                                    "Requests refused with 402 insufficient_credits.", registry=r)
        self.holds = Gauge("bookbag_holds_in_flight", "Credit reservations not yet settled or voided.",
                           registry=r)
        self.provider_latency = Histogram("bookbag_provider_latency_seconds",
                                          "Provider time of a reply (a stream: until its end).",
                                          ["model"], buckets=_SLOW, registry=r)
        self.overhead = Histogram("bookbag_gateway_overhead_seconds",
                                  "Request time minus provider time.", ["route"], buckets=_FAST,
                                  registry=r)
        self.ledger_lag = Histogram("bookbag_ledger_write_lag_seconds",
                                    "From a ledger write being queued to its commit (embedded), "
                                    "or from settle to the SQL commit (redis outbox).",
                                    ["store"], buckets=_FAST, registry=r)
        self.ledger_writes = Counter("bookbag_ledger_writes", "Ledger writes committed.", ["store"],
                                     registry=r)
        self.fallbacks = Counter("bookbag_fallbacks", "Replies a fallback model answered, by "
                                 "requested and answering model and why the requested did not.",
                                 ["requested", "answering", "reason"], registry=r)
        self.breaker = Gauge("bookbag_model_breaker_state", "A model's circuit breaker in this "
                             "process: 0 closed, 1 half-open, 2 open.", ["model"], registry=r)
        self._holds = holds
        self._breakers = breakers
        # `.labels()` validates and locks on every call: each child is looked up once per
        # label tuple and kept (labels are bounded, see above), created when first used.
        # The writer thread uses it too: `.labels()` returns the same child to both threads.
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request (called by the request observer)."""
        entry = record.entry
        route = record.route
        status = record.status
        model = (entry.model or "") if entry else ""
        key = (route, model, entry.billing_mode if entry else None, status)
        counter = self._children.get(key)
        if counter is None:
            mode = str(entry.billing_mode or "") if entry else ""
            counter = self._children[key] = self.requests.labels(route, model, mode, str(status))
        counter.inc()
        self._child(self.duration, route).observe(record.total_ms / 1000)
        if status == 402:
            self.insufficient.inc()
        if entry is None:
            return
        provider_ms = record.provider_ms
        if provider_ms is None:
            return
        self._child(self.provider_latency, model).observe(provider_ms / 1000)
        overhead = record.gateway_ms
        if overhead is not None:
            self._child(self.overhead, route).observe(overhead / 1000)
        if status == 200 and entry.credits:  # set by the settle; 0 when voided
            self._child(self.credits, model).inc(entry.credits)

    def ledger_write(self, store: str, lag_seconds: float, writes: int = 1) -> None:
        """A ledger batch committed `lag_seconds` after its oldest write was queued."""
        self._child(self.ledger_lag, store).observe(lag_seconds)
        self._child(self.ledger_writes, store).inc(writes)

    def feed_from(self, store: str, writer: CommitFeed | None) -> None:
        """Count `writer`'s commits as ledger writes of `store` (the group writer: `embedded`;
        the Redis meter's outbox consumer: `redis`)."""
        if writer is not None:
            writer.on_commit = lambda writes, lag: self.ledger_write(store, lag, writes)

    def fallback(self, requested: str, answering: str, reason: str) -> None:
        """A fallback answered (the flow's `on_fallback`); labels are catalog ids and reasons."""
        self._child(self.fallbacks, requested, answering, reason).inc()

    async def render(self) -> bytes:
        if self._breakers is not None:
            for model, state in self._breakers().items():
                self._child(self.breaker, model).set(_BREAKER[state])
        if self._holds is not None:
            try:
                self.holds.set(await self._holds())
            except Exception:  # the database is down: keep the last figure, still serve the rest
                log.warning("counting holds in flight failed", exc_info=True)
        return generate_latest(self.registry)

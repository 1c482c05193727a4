"""Helpers for the workspace-lifecycle tests: the admin API, concurrent traffic, the ledger."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from gateway.accounts.reconcile import SqlBalances
from gateway.clock import SystemClock
from gateway.storage.database import snapshot
from tests.harness import RunningGateway
from tests.postgres import fresh_database
from tests.redis_server import RedisServer

ADMIN_TOKEN = "admin-test-token"
HELLO = [{"role": "user", "content": "hello"}]


def ts(iso: str) -> float:
    """Epoch seconds of an ISO UTC datetime like 2030-01-31T23:59:55."""
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp()


def admin(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        timeout=30)


def chat(gw: RunningGateway, key: str, model: str = "gpt-4o-mini", **extra: Any) -> httpx.Response:
    with gw.client(key) as c:
        return c.post("/v1/chat/completions", json={"model": model, "messages": HELLO, **extra})


def fire(gws: list[RunningGateway], key: str, n: int, model: str = "gpt-4o-mini",
         workers: int = 32) -> list[httpx.Response]:
    """n chat completions at once, spread over the gateways (one pooled client per gateway)."""
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    clients = [gw.client(key, limits=limits) for gw in gws]
    body = {"model": model, "messages": HELLO}

    def one(i: int) -> httpx.Response:
        return clients[i % len(clients)].post("/v1/chat/completions", json=body)

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(n)))
    finally:
        for client in clients:
            client.close()


def entries(gw: RunningGateway, workspace_id: str, kind: str) -> list[dict[str, Any]]:
    return gw.ledger(workspace_id, kind=kind)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ledger_balance(gw: RunningGateway, workspace_id: str, period_start: str) -> tuple[int, int]:
    """(allotment_remaining, topups_remaining) recomputed from the ledger alone."""
    rows = [r for kind in ("reply", "allotment", "topup", "adjustment")
            for r in gw.ledger(workspace_id, kind=kind)]
    allotment = sum(r["allotment_delta"] for r in rows if r["period_start"] == period_start)
    topups = sum(r["topup_delta"] for r in rows)
    return allotment, topups


def query(gw: RunningGateway, sql_text: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read on the gateway's database (SQLite or PostgreSQL), `?` placeholders."""
    with snapshot(gw.engine) as (cur, sql):
        cur.execute(sql(sql_text), params)
        return [tuple(r) for r in cur.fetchall()]


def shared_store_settings(kind: str, stack: ExitStack, tmp_path: Path) -> dict[str, str]:
    """Settings for gateways that share balances: the `sql` meter on SQLite or PostgreSQL,
    or Redis (a redis-server of the test's own)."""
    if kind == "sql":
        return {"BOOKBAG_METER": "sql"}
    if kind == "postgres":
        return {"BOOKBAG_METER": "sql", "BOOKBAG_DATABASE_URL": stack.enter_context(fresh_database())}
    server = RedisServer(tmp_path / "redis").start()
    stack.callback(server.kill)
    # Generous: the shared 2-core test machine stalls; a stalled Redis call is a 503.
    return {"BOOKBAG_REDIS_URL": server.url, "BOOKBAG_REDIS_TIMEOUT": "3"}


def reconcile(gw: RunningGateway, workspace_id: str) -> list[Any]:
    """The differences `bookbag-gateway reconcile` finds for a workspace (none when it holds)."""
    report = SqlBalances(gw.engine, SystemClock()).reconcile(workspace_id, fix=False)
    return list(report.differences)

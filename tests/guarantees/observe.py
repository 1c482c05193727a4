"""Reading what the system holds, for the history checker: ledger rows, holds, balances.

Every read goes to the stores themselves (SQL, Redis) or to the running
gateway's `/v1/balance` (the balance store as the meter reports it), never
to the gateway's internals.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import httpx
from sqlalchemy import Engine

from gateway.metering.redis_keys import SHARDS, Layout
from gateway.storage.database import make_engine, transaction
from gateway.storage.schema import LEDGER_COLUMNS
from tests.guarantees.client import Account
from tests.guarantees.history import Figures, History, Observed, check
from tests.redis_cluster import sync_client


def ledger_rows(engine: Engine, workspace_ids: Iterable[str]) -> list[dict[str, Any]]:
    ids = sorted(set(workspace_ids))
    if not ids:
        return []
    with transaction(engine) as (cur, sql):
        marks = ", ".join("?" for _ in ids)
        cur.execute(sql(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger "
                        f"WHERE workspace_id IN ({marks}) ORDER BY seq"), ids)
        return [dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in cur.fetchall()]


def sql_holds(engine: Engine, workspace_ids: Iterable[str]) -> dict[str, int]:
    counts = {ws: 0 for ws in workspace_ids}
    with transaction(engine) as (cur, _):
        cur.execute("SELECT workspace_id, COUNT(*) FROM holds GROUP BY workspace_id")
        for ws, n in cur.fetchall():
            if ws in counts:
                counts[ws] = int(n)
    return counts


def redis_holds(url: str, workspace_ids: Iterable[str], layout: Layout | None = None
                ) -> dict[str, int]:
    """Holds in the Redis meter's shard hashes (each value starts with its workspace id)."""
    layout = layout or Layout()
    counts = {ws: 0 for ws in workspace_ids}
    client = sync_client(url)  # one node or a cluster
    try:
        for i in range(SHARDS):
            for value in client.hvals(layout.shard(i).holds):
                ws = str(value).split("|", 1)[0]
                if ws in counts:
                    counts[ws] += 1
    finally:
        client.close()
    return counts


def balances(url: str, accounts: Iterable[Account], timeout: float = 20.0
             ) -> dict[str, dict[str, Any]]:
    """Each workspace's /v1/balance from the running gateway (retried while it recovers)."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    for account in accounts:
        while True:
            try:
                r = httpx.get(url + "/v1/balance", timeout=5,
                              headers={"Authorization": f"Bearer {account.key}"})
                if r.status_code == 200:
                    found[account.workspace_id] = r.json()
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no balance for {account.workspace_id} from {url}")
            time.sleep(0.2)
    return found


def settle_down(url: str, accounts: list[Account], hold_ttl: float, sweep: float) -> None:
    """Wait until the store reports no credits reserved, at most the hold TTL, two sweeps and
    a margin (a hold still there then has leaked: the checker reports it)."""
    deadline = time.monotonic() + hold_ttl + 2 * sweep + 3.0
    while any(b.get("reserved") for b in balances(url, accounts).values()):
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)


def wait_ledger(engine: Engine, history: History, timeout: float = 20.0) -> None:
    """Wait until every ok operation's entry reached SQL (the Redis outbox is asynchronous)."""
    wanted = {a.charged_id for op in history.ops for a in op.attempts
              if a.outcome == "ok" and a.charged_id}
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger_rows(engine, {op.workspace_id for op in history.ops})
        if wanted <= {r["request_id"] for r in rows} or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def observe_and_check(name: str, history: History, *, url: str, database_url: str,
                      accounts: list[Account], hold_ttl: float, sweep: float,
                      redis_url: str | None = None, **extra: Any) -> Figures:
    """Settle down, read everything, check the history; emit and return the figures."""
    settle_down(url, accounts, hold_ttl, sweep)
    engine = make_engine(database_url)
    try:
        wait_ledger(engine, history)
        ids = [a.workspace_id for a in accounts]
        holds = sql_holds(engine, ids)
        if redis_url is not None:
            for ws, n in redis_holds(redis_url, ids).items():
                holds[ws] += n
        seen = balances(url, accounts)
        caps = {a.key_id: a.cap for a in accounts if a.cap is not None}
        observed = Observed(ledger_rows(engine, ids), seen, holds, caps)
    finally:
        engine.dispose()
    figures = check(name, history, observed, **extra)
    figures.emit()
    return figures

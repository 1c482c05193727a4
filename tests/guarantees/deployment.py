"""A whole deployment for one guarantees test: stores, optional fault proxies, the gateway process.

    with deployment(tmp_path, pricing, meter="redis", sql="postgres") as dep:
        dep.gateway.start()
        ...                                   # load, faults
        figures = dep.check("name", history)  # settle down, read the stores, check, emit

meter: `embedded` (the default: SQLite, balances in memory), `sql` (balance
and hold rows), `redis` (Redis with AOF unless `redis_aof=False`), `redis-cluster`
(tests/redis_cluster.py: three primaries with a replica each).
sql: `sqlite`, `postgres` (a fresh database on the machine's server) or
`private-postgres` (a server of the test's own, to stop and start).
`key_cap` gives the first workspace's key a spend cap per period (the checker's
`cap_overdraft` holds the ledger to it); `proxy_redis` / `proxy_sql` put a
`FaultProxy` between the gateway and that store; the checker always reads the
stores directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.guarantees.client import Account
from tests.guarantees.conftest import create_accounts
from tests.guarantees.faultproxy import FaultProxy
from tests.guarantees.history import Figures, History
from tests.guarantees.observe import observe_and_check
from tests.guarantees.process import HOLD_TTL, SWEEP, GatewayProcess, base_env
from tests.postgres import PostgresServer, fresh_database
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer


@dataclass
class Deployment:
    tmp: Path
    database_url: str  # what the checker reads (never through a proxy)
    gateway: GatewayProcess
    accounts: list[Account]
    redis: RedisServer | None = None
    pg: PostgresServer | None = None
    redis_proxy: FaultProxy | None = None
    sql_proxy: FaultProxy | None = None
    closers: list[Any] = field(default_factory=list)
    cluster: RedisCluster | None = None

    @property
    def url(self) -> str:
        return self.gateway.url

    def check(self, name: str, history: History, **extra: Any) -> Figures:
        return observe_and_check(name, history, url=self.url, database_url=self.database_url,
                                 accounts=self.accounts, hold_ttl=HOLD_TTL, sweep=SWEEP,
                                 redis_url=self.redis_url, **extra)

    @property
    def redis_url(self) -> str | None:
        if self.cluster is not None:
            return self.cluster.url
        return self.redis.url if self.redis else None


def _through(proxy: FaultProxy, url: str, port: int) -> str:
    return url.replace(f":{port}/", f":{proxy.port}/")


@contextlib.contextmanager
def deployment(tmp: Path, pricing: Path, *, meter: str = "embedded", sql: str = "sqlite",
               redis_aof: bool = True, proxy_redis: bool = False, proxy_sql: bool = False,
               accounts: int = 2, allotment: int = 200, topups: int = 0,
               key_cap: int | None = None, **env: Any) -> Iterator[Deployment]:
    with contextlib.ExitStack() as stack:
        pg: PostgresServer | None = None
        if sql == "sqlite":
            database_url = f"sqlite:///{tmp / 'gateway.db'}"
        elif sql == "postgres":
            database_url = stack.enter_context(fresh_database())
        else:
            pg = PostgresServer()
            stack.callback(pg.destroy)
            pg.start()
            database_url = pg.url()
        gateway_db = database_url
        sql_proxy = None
        if proxy_sql:
            assert sql != "sqlite", "a fault proxy needs a network database"
            port = int(database_url.split(":")[2].split("/")[0])
            sql_proxy = FaultProxy(port).start()
            stack.callback(sql_proxy.stop)
            gateway_db = _through(sql_proxy, database_url, port)
        redis: RedisServer | None = None
        cluster: RedisCluster | None = None
        redis_proxy = None
        if meter == "redis":
            redis = RedisServer(tmp / "redis", aof=redis_aof).start()
            stack.callback(redis.stop)
            redis_url = redis.url
            if proxy_redis:
                redis_proxy = FaultProxy(redis.port).start()
                stack.callback(redis_proxy.stop)
                redis_url = _through(redis_proxy, redis.url, redis.port)
            env["BOOKBAG_REDIS_URL"] = redis_url
        elif meter == "redis-cluster":  # three primaries with a replica each, no AOF
            cluster = RedisCluster(tmp / "cluster").start()
            stack.callback(cluster.stop)
            env["BOOKBAG_REDIS_URL"] = cluster.url
        elif meter == "sql":
            env["BOOKBAG_METER"] = "sql"
        made = create_accounts(database_url, pricing, accounts, allotment, topups, key_cap)
        gateway = GatewayProcess(tmp, base_env(tmp, pricing, gateway_db, **env))
        stack.callback(gateway.stop)  # first out: the gateway stops before its stores
        yield Deployment(tmp, database_url, gateway, made, redis, pg, redis_proxy, sql_proxy,
                         cluster=cluster)

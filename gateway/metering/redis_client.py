"""The Redis connection the meter and the outbox consumer use, and the one translation of
redis-py's exceptions into gateway errors.

Timeouts are short and retries are few on purpose: when Redis is unreachable
or paused, a metered request must get its 503 within about one timeout, not
queue behind a dead connection. The pool is bounded (no connection pile-up
on a stalled Redis). The only retry is one immediate reconnect on a
connection error (a pooled connection that died with a Redis restart); a
timeout is never retried, since the command may still run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import ServiceUnavailable
from gateway.metering.cluster_url import ClusterUrl, cluster_url

if TYPE_CHECKING:
    from gateway.metering.resp import RespClient
    from gateway.metering.resp_cluster import ClusterScripts

# The errors `resp.py` raises: redis-py's own, so that one translation covers both clients.
__all__ = ["AuthenticationError", "BusyLoadingError", "NoScriptError", "RedisClusterException",
           "RedisConnectionError", "RedisTimeoutError", "ResponseError", "cluster_url", "key_slot"]

log = logging.getLogger("bookbag.meter")

# The client's static type is Any: redis-py's own annotations and the older `types-redis`
# stubs an environment may carry disagree (generic or not, `aclose`), and code must check
# under both.
Redis = Any
# What the meter and the consumer catch around a call: every redis-py failure, and the
# socket errors a connection can surface before redis-py wraps them. Under uvloop, a
# connection reset while redis-py connects surfaces as RuntimeError ("unable to perform
# operation on <TCPTransport closed=True>"): tests/guarantees/test_faults.py's fault proxy.
# RedisClusterException: the cluster client's own (no node serves a slot, no seed answers).
ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError,
                                           RuntimeError)


def cluster_client(url: ClusterUrl, *, timeout: float, read_timeout: float | None = None,
                   max_connections: int = 64, decode_responses: bool = True,
                   retries: int = 1) -> Redis:
    """redis-py's cluster client: slot routing, MOVED/ASK, topology refresh after a failover.
    `max_connections` is per node. A shard whose primary is down fails only its own slots'
    commands (no full-coverage requirement)."""
    client: Any = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in url.seeds],
        username=url.username, password=url.password, ssl=url.tls,
        require_full_coverage=False, max_connections=max_connections,
        socket_connect_timeout=timeout,
        socket_timeout=read_timeout if read_timeout is not None else timeout,
        retry=Retry(NoBackoff(), retries), decode_responses=decode_responses,
    )
    return client


def is_cluster(client: Redis) -> bool:
    return isinstance(client, RedisCluster)


def connect(url: str, *, timeout: float, read_timeout: float | None = None,
            max_connections: int = 64) -> Redis:
    """One client with its own bounded pool: a request waits at most `timeout` for a
    connection, then at most `timeout` to connect and `read_timeout` for the reply.
    A `redis+cluster://` URL gives the cluster client (`cluster_client`)."""
    cluster = cluster_url(url)
    if cluster is not None:
        return cluster_client(cluster, timeout=timeout, read_timeout=read_timeout,
                              max_connections=max_connections)
    pool: Any = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=read_timeout if read_timeout is not None else timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=True,
    )
    client: Any = aioredis.Redis  # `from_pool` (the client owns and closes its pool) postdates the stubs
    return client.from_pool(pool)


def script_client(client: Redis) -> RespClient | ClusterScripts | None:
    """A pipelined client for the meter's scripts, to the server `client` talks to, with its
    timeouts; None over TLS (or any other connection class): redis-py runs the scripts then."""
    from gateway.metering.resp import RespClient

    if is_cluster(client):
        from gateway.metering.resp_cluster import ClusterScripts

        kw: dict[str, Any] = client.get_connection_kwargs()
        if kw.get("ssl") or kw.get("connection_class") not in (None, aioredis.Connection):
            return None
        return ClusterScripts(client, username=kw.get("username"), password=kw.get("password"),
                              connect_timeout=kw["socket_connect_timeout"],
                              timeout=kw["socket_timeout"])
    pool = client.connection_pool
    kwargs: dict[str, Any] = pool.connection_kwargs
    if pool.connection_class is aioredis.Connection:
        address: dict[str, Any] = {"host": kwargs["host"], "port": kwargs["port"]}
    elif pool.connection_class is aioredis.UnixDomainSocketConnection:
        address = {"path": kwargs["path"]}
    else:
        return None
    if kwargs.get("credential_provider") is not None:
        return None
    return RespClient(**address, db=int(kwargs.get("db") or 0), username=kwargs.get("username"),
                      password=kwargs.get("password"),
                      connect_timeout=kwargs["socket_connect_timeout"],
                      timeout=kwargs["socket_timeout"])


def transient(exc: BaseException) -> bool:
    """Redis is unreachable, paused or restarting (as opposed to refusing a command)."""
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | RuntimeError
                      | RedisClusterException)


def unavailable(exc: BaseException) -> ServiceUnavailable:
    """The gateway error for any failure talking to Redis (raise it `from exc`)."""
    if isinstance(exc, BusyLoadingError):
        message = "The balance store is loading its data; retry shortly."
    elif transient(exc):
        message = "The balance store is unreachable; retry shortly."
    else:
        message = "The balance store refused the operation; retry shortly."
    return ServiceUnavailable(message)


async def advise(client: Redis) -> None:
    """Warn about server settings that break the meter's guarantees (CONFIG may be disabled)."""
    with contextlib.suppress(*ERRORS):
        config = await client.config_get("maxmemory-policy")
        if config.get("maxmemory-policy", "noeviction") != "noeviction":
            log.warning("Redis maxmemory-policy is %s: an evicted balance is reseeded from SQL "
                        "and can overdraw; use noeviction", config["maxmemory-policy"])
        config = await client.config_get("appendonly")
        if config.get("appendonly") == "no":
            log.warning("Redis has appendonly=no: a Redis restart loses holds and the outbox "
                        "entries not yet in SQL; turn AOF on")

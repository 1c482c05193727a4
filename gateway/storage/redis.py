"""The one Redis client factory and the one translation of redis-py's failures.

The meter, its outbox consumer, the idempotency store and the rate limits all
connect through `connect` and catch `ERRORS` around every call, turned into
a `ServiceUnavailable` by `unavailable` (naming the store that failed). So a
Redis that is away fails every one of them the same way, within the same
timeouts, on a single node or a cluster (`redis+cluster://`, `cluster_url`).

Timeouts are short and retries are few on purpose: when Redis is unreachable
or paused, a request must get its 503 within about one timeout, not queue
behind a dead connection. The pool is bounded (no connection pile-up on a
stalled Redis). The only retry is one immediate reconnect on a connection
error (a pooled connection that died with a Redis restart); a timeout is
never retried, since the command may still run.
"""

from __future__ import annotations

from typing import Any

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

# The errors `metering/resp.py` raises are redis-py's own, so that one translation covers both.
__all__ = ["ERRORS", "AuthenticationError", "BusyLoadingError", "NoScriptError", "Redis",
           "RedisClusterException", "RedisConnectionError", "RedisTimeoutError", "ResponseError",
           "cluster_url", "connect", "is_cluster", "key_slot", "transient", "unavailable"]

# The client's static type is Any: redis-py's own annotations and the older `types-redis`
# stubs an environment may carry disagree (generic or not, `aclose`), and code must check
# under both.
Redis = Any
# What every caller catches around a call: every redis-py failure, and the socket errors
# (TimeoutError among them) a connection can surface before redis-py wraps them. Under
# uvloop, a connection reset while redis-py connects surfaces as RuntimeError ("unable to
# perform operation on <TCPTransport closed=True>"): tests/guarantees/test_faults.py's fault
# proxy. RedisClusterException: the cluster client's own (no node serves a slot, no seed
# answers).
ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError,
                                           RuntimeError)
# Redis Cluster: redis-py's cluster client refuses a command once a node's pool is full
# (rather than waiting), so a per-request store's pool is as large as the requests a
# process serves; so is its single-node pool.
REQUEST_CONNECTIONS = 1024


def connect(url: str, *, timeout: float, read_timeout: float | None = None,
            max_connections: int = 64, decode_responses: bool = True, retries: int = 1) -> Redis:
    """One client with its own bounded pool: a request waits at most `timeout` for a
    connection, then at most `timeout` to connect and `read_timeout` for the reply.
    `retries`: immediate reconnects after a connection error (0 where a second try could
    not answer in time anyway). A `redis+cluster://` URL gives the cluster client."""
    cluster = cluster_url(url)
    if cluster is not None:
        return _cluster_client(cluster, timeout=timeout, read_timeout=read_timeout,
                               max_connections=max_connections,
                               decode_responses=decode_responses, retries=retries)
    pool: Any = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=read_timeout if read_timeout is not None else timeout,
        retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
        decode_responses=decode_responses,
    )
    client: Any = aioredis.Redis  # `from_pool` (the client owns and closes its pool) postdates the stubs
    return client.from_pool(pool)


def _cluster_client(url: ClusterUrl, *, timeout: float, read_timeout: float | None,
                    max_connections: int, decode_responses: bool, retries: int) -> Redis:
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


def transient(exc: BaseException) -> bool:
    """Redis is unreachable, paused or restarting (as opposed to refusing a command)."""
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | RuntimeError
                      | RedisClusterException)


def unavailable(exc: BaseException, store: str = "The balance store") -> ServiceUnavailable:
    """The gateway error for any failure talking to Redis (raise it `from exc`)."""
    if isinstance(exc, BusyLoadingError):
        message = f"{store} is loading its data; retry shortly."
    elif transient(exc):
        message = f"{store} is unreachable; retry shortly."
    else:
        message = f"{store} refused the operation; retry shortly."
    return ServiceUnavailable(message)

"""The meter's own use of the shared Redis client (`gateway/storage/redis.py`): the pipelined
script client beside it, and the server settings its guarantees depend on."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gateway.storage.redis import ERRORS, Redis, is_cluster

if TYPE_CHECKING:
    from gateway.metering.resp import RespClient
    from gateway.metering.resp_cluster import ClusterScripts

log = logging.getLogger("bookbag.meter")


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

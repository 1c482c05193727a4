"""The meter's own use of the shared Redis client (`gateway/storage/redis.py`): the pipelined
script client beside it, and the server settings its guarantees depend on."""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from gateway.storage.redis import ERRORS, Redis, is_cluster

if TYPE_CHECKING:
    from gateway.metering.resp import RespClient
    from gateway.metering.resp_cluster import ClusterScripts

log = logging.getLogger("bookbag.meter")


def script_client(client: Redis) -> RespClient | ClusterScripts | None:
    """A pipelined client for the meter's scripts, to the server `client` talks to, with its
    timeouts and TLS settings (`rediss://`: the same SSL context redis-py builds); None for
    any other connection class or a credential provider: redis-py runs the scripts then."""
    from gateway.metering.resp import RespClient

    if is_cluster(client):
        from gateway.metering.resp_cluster import ClusterScripts

        kw: dict[str, Any] = client.get_connection_kwargs()
        cls = kw.get("connection_class")
        if cls not in (None, aioredis.Connection, aioredis.SSLConnection):
            return None
        return ClusterScripts(client, username=kw.get("username"), password=kw.get("password"),
                              connect_timeout=kw["socket_connect_timeout"],
                              timeout=kw["socket_timeout"],
                              tls=_tls(kw) if kw.get("ssl") or cls is aioredis.SSLConnection
                              else None)
    pool = client.connection_pool
    kwargs: dict[str, Any] = pool.connection_kwargs
    tls = None
    if pool.connection_class in (aioredis.Connection, aioredis.SSLConnection):
        address: dict[str, Any] = {"host": kwargs["host"], "port": kwargs["port"]}
        if pool.connection_class is aioredis.SSLConnection:
            tls = _tls(kwargs)
    elif pool.connection_class is aioredis.UnixDomainSocketConnection:
        address = {"path": kwargs["path"]}
    else:
        return None
    if kwargs.get("credential_provider") is not None:
        return None
    return RespClient(**address, db=int(kwargs.get("db") or 0), username=kwargs.get("username"),
                      password=kwargs.get("password"),
                      connect_timeout=kwargs["socket_connect_timeout"],
                      timeout=kwargs["socket_timeout"], tls=tls)


def _tls(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The SSL context redis-py's own connection would use (certificates, CA, checks)."""
    return aioredis.SSLConnection(
        **{k: v for k, v in kwargs.items() if k.startswith("ssl_")}).ssl_context.get()


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

"""The Redis Cluster form of BOOKBAG_REDIS_URL (no redis import: settings validate it).

    redis+cluster://[user:password@]host:port[,host:port...][/0]
    rediss+cluster://...   the same over TLS

Any one seed that answers is enough: the client reads the cluster's topology from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`: TLS):
    the seed nodes the client learns the cluster's topology from (any one answering will do)."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def cluster_url(url: str) -> ClusterUrl | None:
    """The cluster a URL names, None for a single-node URL; ValueError when it is malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        return None
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    auth, _, hosts = netloc.rpartition("@")
    user, _, password = auth.partition(":") if auth else ("", "", "")
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        parts = urlsplit(f"//{seed.strip()}")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"bad port in cluster seed {seed!r}") from None
        if not parts.hostname:
            raise ValueError(f"cluster seed {seed!r} has no host")
        seeds.append((parts.hostname, port))
    db = rest[len(netloc):].lstrip("/").split("?", 1)[0]
    if db not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    return ClusterUrl(tuple(seeds), unquote(user) or None, unquote(password) or None,
                      scheme.lower() == "rediss+cluster")

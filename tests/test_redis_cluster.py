"""Redis Cluster (issue 17): the URL form, and what only the cluster does.

The Meter contract suite (tests/test_meter_contract.py, backend `redis-cluster-sqlite`),
the two-gateway no-overdraft test and the Redis idempotency tests also run on the
session's cluster (tests/redis_cluster.py: three primaries with a replica each).
"""

from __future__ import annotations

import pytest

from gateway.metering.cluster_url import ClusterUrl, cluster_url
from gateway.settings import Settings, SettingsError


def test_the_cluster_url_names_its_seeds_credentials_and_tls() -> None:
    assert cluster_url("redis://127.0.0.1:6379/0") is None
    assert cluster_url("redis+cluster://a:7000,b:7001,c") == ClusterUrl(
        (("a", 7000), ("b", 7001), ("c", 6379)), None, None, False)
    assert cluster_url("rediss+cluster://user:p%40ss:w@h1:7000,h2:7001/0") == ClusterUrl(
        (("h1", 7000), ("h2", 7001)), "user", "p@ss:w", True)
    assert cluster_url("redis+cluster://[::1]:7000") == ClusterUrl(
        (("::1", 7000),), None, None, False)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://a:7000,:7001", "has no host"),
    ("redis+cluster://a:notaport", "bad port"),
    ("redis+cluster://a:7000/3", "only database 0"),
])
def test_a_malformed_cluster_url_is_refused_at_startup(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_url(url)
    with pytest.raises(SettingsError, match="BOOKBAG_REDIS_URL: .*" + message):
        Settings.from_env({"BOOKBAG_REDIS_URL": url})

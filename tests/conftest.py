"""Fixtures: the fake provider (one per session) and a factory of running gateways."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.clock import Clock
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, sqlite_settings, test_pricing

if TYPE_CHECKING:
    from tests.redis_cluster import RedisCluster
    from tests.redis_server import RedisServer

REQUIRE_SERVICES = os.environ.get("BOOKBAG_TEST_REQUIRE_SERVICES") == "1"

# Shared test suites imported by test modules: show their failed asserts in detail.
pytest.register_assert_rewrite("tests.meter_contract")


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture
def provider(fake: FakeProvider) -> FakeProvider:
    """The session's fake provider, with its counters and failures reset for this test."""
    fake.reset()
    return fake


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(test_pricing(provider))
    return path


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def make_gateway(tmp_path: Path, pricing: Path) -> Iterator[GatewayFactory]:
    """Start gateways on the embedded default; keyword arguments are BOOKBAG_* overrides."""
    started: list[RunningGateway] = []

    def factory(clock: Clock | None = None, **overrides: Any) -> RunningGateway:
        from gateway.clock import SystemClock

        settings = sqlite_settings(tmp_path, pricing, **overrides)
        gw = RunningGateway(settings, clock or SystemClock()).start()
        started.append(gw)
        return gw

    yield factory
    for gw in reversed(started):
        gw.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> RunningGateway:
    return make_gateway()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (a missing redis-server fails in CI). Ask for it
    before `make_gateway`, so that it outlives the gateways (stopped last)."""
    from tests.redis_server import RedisServer  # it imports this module

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster (3 primaries, 1 replica each) for the whole session: tests keep to
    their own workspaces or key prefixes. Tests that kill or pause nodes start their own."""
    import shutil

    from tests.redis_cluster import RedisCluster

    if shutil.which("redis-server") is None:
        service_missing("redis-server (apt-get install redis-server)")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session's Redis Cluster, emptied for this test (for tests that run gateways)."""
    redis_cluster.flush()
    return redis_cluster.url


def service_missing(what: str) -> None:
    """Skip locally when a server is missing; fail in CI (BOOKBAG_TEST_REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (BOOKBAG_TEST_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")

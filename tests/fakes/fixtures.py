"""The fake provider as pytest fixtures, for the tests of the fake itself: one server per
module, reset around each test. Import the names into a test module to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture
def provider(server: FakeProvider) -> Iterator[FakeProvider]:
    server.reset()
    yield server
    server.reset()

"""The test catalog without its litellm (Anthropic) route, for tests that never call it.

A gateway whose catalog has a litellm route imports litellm in the background
after startup (seconds, more on a loaded machine), and stopping it waits for
that import; tests of storage and processes have no use for it.
"""

from __future__ import annotations

from tests.fake_provider import FakeProvider
from tests.harness import test_pricing


def relay_only_pricing(fake: FakeProvider) -> str:
    blocks = test_pricing(fake).split("\n\n")
    return "\n\n".join(b for b in blocks if 'provider = "anthropic"' not in b)


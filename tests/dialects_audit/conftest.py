"""One gateway for the dialect audit (SPEC "Three dialects, one meter"): the test catalog
with gpt-4o-mini speaking Responses (relayed), and a Responses-speaking pair with a
fallback (st-main -> st-cheap)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import harness
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway

HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
RELAYED = "gpt-4o-mini"


def pricing_text(fake: FakeProvider) -> str:
    text = harness.speaks_responses(harness.test_pricing(fake))
    pair = (f'[models."st-main"]\nprovider = "openai"\ncredits = 5\nupstream = "up-st-main"\n'
            f'api_base = "{fake.openai_base}"\ndialects = ["chat", "responses"]\n'
            f'fallbacks = ["st-cheap"]\n\n'
            f'[models."st-cheap"]\nprovider = "openai"\ncredits = 2\nupstream = "up-st-cheap"\n'
            f'api_base = "{fake.openai_base}"\ndialects = ["chat", "responses"]\n\n')
    return text.replace("[plans.free]", pair + "[plans.free]")


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
            ) -> Iterator[RunningGateway]:
    """One gateway for the package: every test works in its own workspace."""
    with harness.running_catalog(tmp_path_factory.mktemp("dialects-audit"),
                                 pricing_text(fake)) as gw:
        yield gw


def post(gateway: RunningGateway, path: str, body: Any, key: str | None = None,
         **headers: str) -> httpx.Response:
    """A POST as the route's own clients send it: Messages with `x-api-key` and
    `anthropic-version`, the OpenAI routes with a Bearer token."""
    sent = dict(headers)
    if key is not None and path.startswith("/v1/messages"):
        sent = {"x-api-key": key, "anthropic-version": "2023-06-01", **sent}
    elif key is not None:
        sent = {"authorization": f"Bearer {key}", **sent}
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        return c.post(path, json=body, headers=sent)


def responses_refused(gateway: RunningGateway, provider: FakeProvider, model: str,
                      extra: dict[str, Any], param: str) -> dict[str, Any]:
    """A Responses request with `extra` is a 400 `unsupported_parameter` naming `param`, and
    nothing reached the provider or the ledger; the error, for more checks."""
    ws, key = gateway.workspace("free")
    r = post(gateway, "/v1/responses", {"model": model, "input": "hi", **extra}, key)
    assert r.status_code == 400, r.text
    error: dict[str, Any] = r.json()["error"]
    assert (error["param"], error["code"]) == (param, "unsupported_parameter")
    assert provider.count() == 0 and gateway.ledger(ws) == []
    return error

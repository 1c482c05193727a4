"""No state crosses tenants on the house's keys: `store` forced off (unless the workspace
opts in, or the operator for all with BOOKBAG_RESPONSES_STORE=1), `previous_response_id`
only for an id the
gateway returned to the same workspace (looked up in the ledger), `prompt` and
`conversation` refused. A caller's own provider key runs on its own account: passed on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway, running, sqlite_settings
from tests.lifecycle_support import admin, wait_for
from tests.responses.conftest import RELAYED, pricing_text, sdk


def post(gateway: RunningGateway, key: str, body: dict[str, Any],
         **headers: str) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        return c.post("/v1/responses", json=body,
                      headers={"authorization": f"Bearer {key}", **headers})


def test_store_is_forced_off_on_the_house_key(gateway: RunningGateway,
                                             provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    assert post(gateway, key, {"model": RELAYED, "input": "hi", "store": True}).status_code == 200
    assert provider.received[-1].body["store"] is False


def test_a_callers_own_key_passes_store_and_state_on(gateway: RunningGateway,
                                                    provider: FakeProvider) -> None:
    _, key = gateway.workspace("free")
    r = post(gateway, key, {"model": RELAYED, "input": "hi", "store": True},
             **{"x-bookbag-provider-key": OPENAI_KEY})
    assert r.status_code == 200
    assert provider.received[-1].body["store"] is True
    # the provider stored it for that account: the chain is the provider's business
    again = post(gateway, key, {"model": RELAYED, "input": "more",
                                "previous_response_id": r.json()["id"]},
                 **{"x-bookbag-provider-key": OPENAI_KEY})
    assert again.status_code == 200


def test_previous_response_id_of_another_workspace_is_refused(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    _, mine = gateway.workspace("free")
    theirs_ws, theirs = gateway.workspace("free")
    their_id = sdk(gateway, theirs).responses.create(model=RELAYED, input="secret").id
    sent = provider.count("/v1/responses")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, mine).responses.create(model=RELAYED, input="what did they say?",
                                            previous_response_id=their_id)
    body: Any = caught.value.body
    assert body["code"] == "previous_response_not_found"
    assert body["param"] == "previous_response_id"
    assert provider.count("/v1/responses") == sent  # never reached the provider
    unknown = post(gateway, mine, {"model": RELAYED, "input": "x",
                                   "previous_response_id": "resp_never_given"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == body["message"].replace(
        their_id, "resp_never_given")  # another tenant's id looks like no id at all
    assert len(gateway.ledger(theirs_ws)) == 1


@pytest.mark.parametrize(("field", "value"), [("prompt", {"id": "pmpt_123"}),
                                         ("conversation", "conv_123")])
def test_stored_prompts_and_conversations_are_refused(
        gateway: RunningGateway, provider: FakeProvider, field: str, value: Any) -> None:
    ws, key = gateway.workspace("free")
    r = post(gateway, key, {"model": RELAYED, "input": "hi", field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["code"] == "unsupported_parameter"
    assert provider.count("/v1/responses") == 0 and gateway.ledger(ws) == []


@pytest.fixture
def storing(tmp_path: Path, fake: FakeProvider) -> Iterator[RunningGateway]:
    """A gateway whose operator lets workspaces keep Responses on the house's account."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text(pricing_text(fake))
    with running(sqlite_settings(tmp_path, pricing, BOOKBAG_RESPONSES_STORE="1")) as gw:
        yield gw


def test_with_store_allowed_a_workspace_continues_its_own_response(
        storing: RunningGateway, provider: FakeProvider) -> None:
    ws, key = storing.workspace("free")
    client = sdk(storing, key)
    first = client.responses.create(model=RELAYED, input="remember 42", store=True)
    assert provider.received[-1].body["store"] is True
    second = client.responses.create(model=RELAYED, input="what number?",
                                     previous_response_id=first.id)
    assert provider.received[-1].body["previous_response_id"] == first.id
    rows = storing.ledger(ws)
    assert sorted(r["response_id"] for r in rows) == sorted([first.id, second.id])
    _, other = storing.workspace("free")
    with pytest.raises(openai.BadRequestError):
        sdk(storing, other).responses.create(model=RELAYED, input="x",
                                             previous_response_id=first.id)


def test_a_translated_route_refuses_previous_response_id(gateway: RunningGateway) -> None:
    _, key = gateway.workspace("free")
    first = sdk(gateway, key).responses.create(model="claude-haiku-4-5", input="hi")
    r = post(gateway, key, {"model": "claude-haiku-4-5", "input": "more",
                            "previous_response_id": first.id})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "previous_response_id"


def test_a_workspace_that_opts_in_keeps_its_responses_stored(
        gateway: RunningGateway, provider: FakeProvider) -> None:
    """The opt-in is per workspace (`responses_store`, PATCH /admin/workspaces/{id} or
    `workspace set --responses-store`): only that workspace's `store` reaches the provider,
    and its stored response still serves only itself."""
    ws, key = gateway.workspace("free")
    _, other = gateway.workspace("free")
    with admin(gateway) as c:
        r = c.patch(f"/admin/workspaces/{ws}", json={"responses_store": True})
        assert r.status_code == 200 and r.json()["responses_store"] is True, r.text
        bad = c.patch(f"/admin/workspaces/{ws}", json={"responses_store": "yes"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "responses_store"

    def stored() -> bool:  # the key cache sees the change within its TTL
        assert post(gateway, key, {"model": RELAYED, "input": "hi", "store": True}
                    ).status_code == 200
        return bool(provider.received[-1].body["store"])

    wait_for(stored, what="the workspace's opt-in")
    first = sdk(gateway, key).responses.create(model=RELAYED, input="remember 42", store=True)
    assert provider.received[-1].body["store"] is True
    sdk(gateway, key).responses.create(model=RELAYED, input="what number?",
                                       previous_response_id=first.id)
    assert provider.received[-1].body["previous_response_id"] == first.id
    assert post(gateway, other, {"model": RELAYED, "input": "hi", "store": True}
                ).status_code == 200
    assert provider.received[-1].body["store"] is False  # the others: still forced off
    with pytest.raises(openai.BadRequestError):
        sdk(gateway, other).responses.create(model=RELAYED, input="x",
                                             previous_response_id=first.id)
    with admin(gateway) as c:
        assert c.patch(f"/admin/workspaces/{ws}", json={"responses_store": False}
                       ).json()["responses_store"] is False
    wait_for(lambda: not stored(), what="the workspace's opt-out")

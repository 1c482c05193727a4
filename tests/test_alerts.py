"""Alert thresholds (spend controls): credits left or percent of the allotment used; each
crossing is one signed `credits.threshold` event per period, once across processes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.accounts.alerts import parse_alerts
from gateway.accounts.keyring import generate_key
from gateway.accounts.workspaces import AccountError
from gateway.cli.app import app as cli
from gateway.webhooks.registry import verify
from tests.conftest import GatewayFactory
from tests.lifecycle_support import admin, fire, shared_store_settings, wait_for
from tests.test_webhooks import FAST, Receiver, add_endpoint
from tests.test_webhooks import receiver as receiver  # the fixture

runner = CliRunner()


def test_thresholds_parse_to_a_canonical_form() -> None:
    assert parse_alerts([500, "80%", "80.0%", "0"]) == ("credits:0", "credits:500", "used:80")
    assert parse_alerts("100, 12.5%") == ("credits:100", "used:12.5")
    assert parse_alerts(None) == parse_alerts([]) == parse_alerts("") == ()
    for bad in (["-1"], ["0%"], ["101%"], ["x%"], ["five"], [True], [1.5], [[1]], 7):
        with pytest.raises(AccountError):
            parse_alerts(bad)  # type: ignore[arg-type]


@pytest.fixture(params=["sql", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield shared_store_settings(request.param, stack, tmp_path)


def test_each_crossing_is_one_signed_event_across_processes(
        shared: dict[str, str], make_gateway: GatewayFactory, receiver: Receiver) -> None:
    env = {"BOOKBAG_SECRET_KEY": generate_key(), **shared, **FAST}
    gws = [make_gateway(**env) for _ in range(2)]
    ws, key = gws[0].workspace("free")  # 100 credits
    endpoint = add_endpoint(gws[0], ws, receiver.url, events=["credits.threshold"])
    with admin(gws[0]) as c:
        r = c.patch(f"/admin/workspaces/{ws}", json={"alert_thresholds": [95, "10%", "50%"]})
        assert r.status_code == 200, r.text
        assert r.json()["alert_thresholds"] == "credits:95,used:10,used:50"
    time.sleep(2.1)  # the settings cache of the gateways (2 s) has seen them
    responses = fire(gws, key, 30, workers=15)  # 1 credit each: 70 left, 30 % used
    assert all(r.status_code == 200 for r in responses)
    wait_for(lambda: len(receiver.of_type("credits.threshold")) >= 2, what="two crossings")
    fire(gws, key, 4)
    time.sleep(1.0)  # nothing more arrives: each crossing once
    deliveries = receiver.of_type("credits.threshold")
    assert Counter(d.event["data"]["threshold"] for d in deliveries) == {
        "credits:95": 1, "used:10": 1}
    for d in deliveries:
        assert verify(endpoint["secret"], d.headers["bookbag-signature"], d.body)
        assert d.event["data"]["period_start"] and d.event["data"]["allotment"] == 100


def test_bad_thresholds_are_400_and_change_nothing(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    ws, _ = gw.workspace("free")
    with admin(gw) as c:
        r = c.patch(f"/admin/workspaces/{ws}", json={"name": "renamed", "alert_thresholds": ["0%"]})
        assert r.status_code == 400 and "percent" in r.json()["error"]["message"]
        shown = c.get(f"/admin/workspaces/{ws}").json()
        assert (shown["name"], shown["alert_thresholds"]) == ("test", None)
    url = gw.settings.database_url
    bad = runner.invoke(cli, ["workspace", "set", ws, "--name", "x", "--alerts=101%",
                              "--database-url", url])
    assert bad.exit_code != 0 and "percent" in bad.output, bad.output
    assert gw.accounts.workspace(ws).name == "test"
    ok = runner.invoke(cli, ["workspace", "set", ws, "--alerts", "500,80%", "--json",
                             "--database-url", url])
    assert ok.exit_code == 0, ok.output
    assert gw.accounts.workspace(ws).alert_thresholds == "credits:500,used:80"

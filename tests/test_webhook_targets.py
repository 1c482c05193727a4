"""Webhooks reach public addresses only, unless the operator allows private ones (issue 12, point 13).

Checked when an endpoint is created or its URL changed, and again at every
delivery (DNS can change): a loopback, private, link-local, unspecified or
multicast target gets nothing.
"""

from __future__ import annotations

import time

import pytest

from gateway.accounts.keyring import generate_key
from gateway.webhooks.registry import Webhooks
from gateway.webhooks.targets import PrivateTarget, check_url
from tests.conftest import GatewayFactory
from tests.lifecycle_support import admin, wait_for
from tests.test_webhooks import FAST, Receiver, add_endpoint

PRIVATE = [
    "http://127.0.0.1:9/h", "http://localhost:9/h", "http://10.0.0.5/h", "http://192.168.1.1/h",
    "http://172.16.0.1/h", "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:80/",
    "http://224.0.0.1/", "http://100.64.0.1/", "http://[::1]:9/h", "http://[::ffff:127.0.0.1]/",
    "http://[fe80::1]/", "http://[fc00::1]/", "http://[::]/", "https://2130706433/",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_a_private_target_is_refused_at_create_and_update(
    make_gateway: GatewayFactory, url: str,
) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key())
    ws, _ = gw.workspace("free")
    with admin(gw) as c:
        r = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": url})
        assert r.status_code == 400, r.text
        assert "BOOKBAG_WEBHOOK_ALLOW_PRIVATE" in r.json()["error"]["message"]
        public = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": "https://hooks.example/h"})
        assert public.status_code == 201, public.text  # a name that does not resolve (yet): kept
        r = c.patch(f"/admin/webhooks/{public.json()['id']}", json={"url": url})
        assert r.status_code == 400, r.text
        assert c.get(f"/admin/webhooks/{public.json()['id']}").json()["url"] == "https://hooks.example/h"


def test_the_setting_allows_private_targets(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), BOOKBAG_WEBHOOK_ALLOW_PRIVATE="1")
    ws, _ = gw.workspace("free")
    with admin(gw) as c:
        for url in ("http://127.0.0.1:9/h", "http://localhost:9/h", "http://[::1]:9/h"):
            r = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": url})
            assert r.status_code == 201, r.text


def test_public_addresses_pass_the_check() -> None:
    for url in ("https://8.8.8.8/h", "http://[2001:4860:4860::8888]:443/h", "https://no-such.invalid/"):
        check_url(url)
    with pytest.raises(PrivateTarget):
        check_url("http://localhost/")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_delivery_checks_the_target_again(make_gateway: GatewayFactory, host: str) -> None:
    """An endpoint stored while private targets were allowed (or whose name now resolves to a
    private address) gets nothing: the delivery fails and says why."""
    receiver = Receiver().start()
    try:
        fast = {k: v for k, v in FAST.items() if k != "BOOKBAG_WEBHOOK_ALLOW_PRIVATE"}
        gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), **fast)
        ws, _ = gw.workspace("free")
        url = receiver.url.replace("127.0.0.1", host)
        lenient = Webhooks(gw.engine, gw.gw.webhooks.keyring, gw.clock, allow_private=True)
        endpoint = lenient.create(ws, url)
        gw.gw.webhooks.emit(ws, "credits.low", "test", {"fraction": "0.1"})

        def attempted() -> list[dict[str, object]]:
            [event] = gw.gw.webhooks.events(ws)
            return [d for d in event["deliveries"] if d["attempts"] >= 1]

        [delivery] = wait_for(attempted, what="a delivery attempt")
        time.sleep(0.3)  # retries (backoff 0.1 s) would have reached the receiver by now
        assert receiver.received == []
        assert delivery["endpoint_id"] == endpoint.id and delivery["status"] == "pending"
        assert "non-public address" in str(delivery["last_error"])
    finally:
        receiver.stop()


def test_delivery_to_a_private_target_works_when_allowed(make_gateway: GatewayFactory) -> None:
    receiver = Receiver().start()
    try:
        gw = make_gateway(BOOKBAG_SECRET_KEY=generate_key(), **FAST)
        ws, _ = gw.workspace("free")
        add_endpoint(gw, ws, receiver.url.replace("127.0.0.1", "localhost"))
        gw.gw.webhooks.emit(ws, "credits.low", "test", {"fraction": "0.1"})
        wait_for(lambda: receiver.received, what="the delivery")
    finally:
        receiver.stop()

"""Operator changes reach every running gateway (DESIGN invariant 12), through the real CLI.

Two `bookbag-gateway serve` processes share the stores; `bookbag-gateway`
commands (another process) create a workspace and key, grant a top-up and
revoke a key. Each change must be seen by both gateways within seconds
(polled: the figures say how long it took), and no cache may hide a balance:
a workspace at zero gets exactly the credits granted, across both processes,
and no more (the ledger and the checker agree).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.guarantees.client import Account, make_client, new_op, run_op
from tests.guarantees.deployment import Deployment, deployment
from tests.guarantees.history import OK, History
from tests.guarantees.process import GatewayProcess, command

PROPAGATION = 10.0  # "within a few seconds": the most any change may take here


def cli(dep: Deployment, *args: str) -> Any:
    result = subprocess.run([*command(), *args, "--json"], env=dep.gateway.env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def seen_within(gateways: list[GatewayProcess], probe: Callable[[str], bool]) -> float:
    """Seconds until `probe(url)` holds on every gateway (fails past PROPAGATION)."""
    started = time.monotonic()
    pending = [gw.url for gw in gateways]
    while pending:
        pending = [url for url in pending if not probe(url)]
        assert time.monotonic() - started < PROPAGATION, f"not seen by {pending}"
        time.sleep(0.05)
    return round(time.monotonic() - started, 3)


def balance(url: str, key: str) -> dict[str, Any]:
    r = httpx.get(url + "/v1/balance", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return dict(r.json()) if r.status_code == 200 else {"status": r.status_code}


async def spend(urls: list[str], history: History, account: Account, n: int) -> list[Any]:
    """n metered requests spread over the gateways, all at once."""
    async def one(i: int) -> Any:
        async with make_client(urls[i % len(urls)]) as client:
            op = new_op(history, account, "gpt-4o-mini", 1, prefix="spend")
            return await run_op(client, op, account, deadline=time.monotonic() + 20,
                                retry_failures=True)  # a 5xx is retried: only 402 ends it

    return await asyncio.gather(*(one(i) for i in range(n)))


def operator_run(dep: Deployment, name: str) -> None:
    first = dep.gateway.start()
    second = GatewayProcess(dep.tmp / "second", dep.gateway.env)
    (dep.tmp / "second").mkdir()
    second.start()
    gateways = [first, second]
    urls = [gw.url for gw in gateways]
    history = History()
    try:
        made = cli(dep, "workspace", "create", "operator", "--plan", "enterprise",
                   "--credits", "3")
        account = Account(made["workspace_id"], made["key"])
        new_key_s = seen_within(gateways, lambda url: balance(url, account.key).get("balance") == 3)
        outcomes = asyncio.run(spend(urls, history, account, 8))
        assert sum(op.outcome == OK for op in outcomes) == 3  # the allotment, not one more
        cli(dep, "topup", "2", "--workspace", account.workspace_id, "--ref", "operator-1")
        topup_s = seen_within(gateways, lambda url: balance(url, account.key).get("balance") == 2)
        outcomes = asyncio.run(spend(urls, history, account, 6))
        assert sum(op.outcome == OK for op in outcomes) == 2  # the grant, not one more
        key_id = made["key_id"]
        cli(dep, "key", "revoke", key_id)
        revoke_s = seen_within(gateways, lambda url: balance(url, account.key).get("status") == 401)
        dep.accounts = [*dep.accounts, Account(account.workspace_id, cli(
            dep, "key", "create", "--workspace", account.workspace_id)["key"])]
        figures = dep.check(name, history, new_key_s=new_key_s, topup_s=topup_s,
                            revoke_s=revoke_s, gateways=len(gateways))
        figures.assert_clean()
    finally:
        second.stop()


def test_operator_changes_reach_every_gateway(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="sql") as dep:
        operator_run(dep, "operator[sqlite-sql]")


@pytest.mark.slow
def test_operator_changes_reach_every_gateway_on_redis(tmp_path: Path, pricing: Path) -> None:
    with deployment(tmp_path, pricing, meter="redis", sql="postgres") as dep:
        operator_run(dep, "operator[redis]")

"""Fixtures of the guarantees suite, and the summary of its figures at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.accounts.workspaces import Accounts
from gateway.catalog import load
from gateway.clock import SystemClock
from gateway.storage.database import create_schema, make_engine
from tests.fake_provider import FakeProvider
from tests.guarantees.client import CHAIN, CHAINS, Account
from tests.guarantees.history import emitted
from tests.relay_pricing import relay_only_pricing


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """No litellm route: subprocess gateways start (and restart) without importing it.
    One fallback chain (client.py `CHAINS`): `chain-mini` (1 credit) -> gpt-4o (5)."""
    path = tmp_path / "pricing.toml"
    chain = (f'[models."{CHAIN}"]\nprovider = "openai"\ncredits = {CHAINS[CHAIN][CHAIN]}\n'
             f'upstream = "up-{CHAIN}"\napi_base = "{provider.openai_base}"\n'
             f'fallbacks = ["gpt-4o"]\n\n')
    path.write_text(relay_only_pricing(provider).replace("[plans.free]", chain + "[plans.free]"))
    return path


def create_accounts(database_url: str, pricing: Path, n: int, allotment: int,
                    topups: int = 0, key_cap: int | None = None) -> list[Account]:
    """n workspaces on a custom allotment (plus top-ups), each with one key; with `key_cap`,
    the first workspace's key has that spend cap per period (the others none)."""
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        accounts = Accounts(engine, load(pricing), SystemClock())
        found = []
        for i in range(n):
            ws = accounts.create_workspace(f"guarantees-{i}", "enterprise",
                                           custom_allotment=allotment)
            if topups:
                accounts.apply(accounts.topup_entry(ws.id, topups, ref=f"seed-{i}"))
            key = accounts.create_key(ws.id)
            cap = key_cap if i == 0 else None
            if cap is not None:
                accounts.set_cap(ws.id, "key", key.id, cap)
            found.append(Account(ws.id, key.key, key.id, cap))
        return found
    finally:
        engine.dispose()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not emitted:
        return
    terminalreporter.section("guarantees: figures (also in test-artifacts/guarantees.jsonl)")
    for line in emitted:
        terminalreporter.write_line(json.dumps(line))

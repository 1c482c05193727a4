"""`serve --workers N` without Redis: N processes share balances through the `sql` meter and
cannot overdraw; the embedded meter refuses a second owner of its database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from gateway.accounts.workspaces import Accounts
from gateway.app import build_meter
from gateway.catalog import load
from gateway.clock import SystemClock
from gateway.ledger.writer import GroupWriter
from gateway.metering.memory_accounts import OwnerConflict
from gateway.storage.database import create_schema, make_engine, transaction
from tests.conftest import GatewayFactory
from tests.fake_provider import OPENAI_KEY, FakeProvider
from tests.harness import free_port
from tests.relay_pricing import relay_only_pricing

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
BALANCE = 60
REQUESTS = 240


@pytest.fixture
def pricing(tmp_path: Path, provider: FakeProvider) -> Path:
    """No litellm route: nothing to import in the background, so gateways stop at once."""
    path = tmp_path / "pricing.toml"
    path.write_text(relay_only_pricing(provider))
    return path


@dataclass
class Served:
    url: str
    accounts: Accounts
    workspace: str
    key: str
    proc: subprocess.Popen[bytes]
    engine: Engine

    def workers(self) -> int:
        """Live uvicorn worker processes (spawned children running `spawn_main`)."""
        count = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(FileNotFoundError):
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        count += 1
        return count


@pytest.fixture
def served(tmp_path: Path, pricing: Path) -> Iterator[Served]:
    db = f"sqlite:///{tmp_path / 'workers.db'}"
    engine = make_engine(db)
    create_schema(engine)
    accounts = Accounts(engine, load(pricing), SystemClock())
    ws = accounts.create_workspace("workers", "enterprise", custom_allotment=BALANCE)
    key = accounts.create_key(ws.id).key
    port = free_port()
    env = {**os.environ, "BOOKBAG_DATABASE_URL": db, "BOOKBAG_PRICING": str(pricing),
           "OPENAI_API_KEY": OPENAI_KEY, "BOOKBAG_LOG_LEVEL": "warning",
           "BOOKBAG_SPOOL_PATH": str(tmp_path / "spool.jsonl"), "BOOKBAG_SHUTDOWN_GRACE": "5"}
    env.pop("BOOKBAG_REDIS_URL", None)
    env.pop("BOOKBAG_METER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve --workers 2 did not start"
            time.sleep(0.1)
        yield Served(url, accounts, ws.id, key, proc, engine)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        engine.dispose()


async def fire(url: str, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT)
                                      for _ in range(REQUESTS)))


def test_two_workers_on_sqlite_never_overdraw(served: Served, provider: FakeProvider) -> None:
    assert served.workers() == 2
    replies = asyncio.run(fire(served.url, served.key))
    codes = [r.status_code for r in replies]
    assert codes.count(200) == BALANCE, {c: codes.count(c) for c in set(codes)}
    assert codes.count(402) == REQUESTS - BALANCE
    assert provider.count("/v1/chat/completions") == BALANCE
    balance = served.accounts.balance(served.workspace)
    assert (balance["balance"], balance["reserved"]) == (0, 0)
    with transaction(served.engine) as (cur, _):  # the ledger: one entry per 200, nothing else
        cur.execute("SELECT request_id, credits FROM ledger WHERE kind = 'reply'")
        raw = cur.fetchall()
    assert sorted(r[0] for r in raw) == sorted(r.headers["x-request-id"] for r in replies
                                               if r.status_code == 200)
    assert sum(r[1] for r in raw) == BALANCE
    assert served.workers() == 2  # both still alive
    print(f"\nserve --workers 2 (sql meter, SQLite): {REQUESTS} concurrent requests, balance "
          f"{BALANCE}: {codes.count(200)} x 200, {codes.count(402)} x 402, charged {sum(r[1] for r in raw)}")


def test_the_embedded_meter_refuses_a_second_owner(make_gateway: GatewayFactory) -> None:
    first = make_gateway()  # the default: the embedded (memory) meter owns the balances

    async def second_owner() -> None:
        writer = GroupWriter(first.engine)
        writer.start()
        meter = build_meter(first.settings, first.engine, writer, SystemClock(),
                            load(first.settings.pricing_path))
        try:
            await meter.start()
        finally:
            await writer.close()

    with pytest.raises(OwnerConflict, match="BOOKBAG_METER=sql"):
        asyncio.run(second_owner())

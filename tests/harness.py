"""Running the real gateway for tests: uvicorn on a free loopback port, in a thread.

The gateway reaches the fake provider only through `api_base` in a test
pricing.toml, exactly as it would reach the real APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.accounts.workspaces import Accounts
from gateway.app import Gateway, create_app
from gateway.catalog import load
from gateway.clock import Clock, SystemClock
from gateway.edge.protocol import protocol_for
from gateway.settings import Settings
from gateway.storage.database import create_schema, make_engine
from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider


async def eventually(cond: Callable[[], bool]) -> None:
    """Until `cond` holds (state of another party, with no event to wait on); 10 s at most."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close first
            sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return received
            received += chunk
        return received


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pricing(fake: FakeProvider) -> str:
    return f"""
[models."bookbag-local"]
provider = "local"
credits = 1
aliases = ["Bookbag Local"]

[models."gpt-4o-mini"]
provider = "openai"
credits = 1
api_base = "{fake.openai_base}"
byo = true
aliases = ["GPT-4o mini", "gpt-4o-mini-2024-07-18"]

[models."gpt-4o"]
provider = "openai"
credits = 5
api_base = "{fake.openai_base}"
byo = true

[models."claude-haiku-4-5"]
provider = "anthropic"
credits = 2
upstream = "claude-haiku-4-5-20251001"
api_base = "{fake.anthropic_base}"
byo = true
aliases = ["Claude Haiku 4.5"]

[models."custom-llm"]
provider = "openai"
credits = 3
api_base = "{fake.openai_base}"

[models."text-embedding-3-small"]
provider = "openai"
kind = "embedding"
credits = 0
api_base = "{fake.openai_base}"
byo = true

[plans.free]
credits = 100

[plans.hobby]
credits = 2000

[plans.pro]
credits = 40000

[plans.enterprise]
credits = "custom"
"""


class RunningGateway:
    """One gateway process-equivalent: its own uvicorn server, loop and thread."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.app = create_app(settings, clock=clock)
        self.port = settings.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", loop="asyncio", http=protocol_for(settings),
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        engine = make_engine(settings.database_url)
        create_schema(engine)
        self.engine = engine
        self.accounts = Accounts(engine, load(settings.pricing_path), clock)

    def start(self) -> RunningGateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway failed to start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.engine.dispose()

    @property
    def gw(self) -> Gateway:
        gw: Gateway = self.app.state.gateway
        return gw

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's own loop (to reach the meter from a test)."""
        return asyncio.run_coroutine_threadsafe(coro, self.gw.loop).result(30)

    # --- helpers for tests -------------------------------------------------

    def workspace(self, plan: str = "free", **kwargs: Any) -> tuple[str, str]:
        ws = self.accounts.create_workspace("test", plan, **kwargs)
        key = self.accounts.create_key(ws.id)
        return ws.id, key.key

    def key(self, workspace_id: str, **kwargs: Any) -> str:
        return self.accounts.create_key(workspace_id, **kwargs).key

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def balance(self, key: str) -> dict[str, Any]:
        with self.client(key) as c:
            r = c.get("/v1/balance")
            r.raise_for_status()
            data: dict[str, Any] = r.json()
            return data

    def ledger(self, workspace_id: str | None = None, kind: str = "reply") -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            assert raw is not None
            cur = raw.cursor()
            q = "SELECT * FROM ledger WHERE kind = ?"
            params: list[Any] = [kind]
            if workspace_id:
                q += " AND workspace_id = ?"
                params.append(workspace_id)
            cur.execute(q.replace("?", "%s") if self.engine.dialect.name != "sqlite" else q,
                        params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def wait_ledger(self, workspace_id: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.ledger(workspace_id)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)


def sqlite_settings(tmp_path: Path, pricing: Path, **overrides: Any) -> Settings:
    env = {
        "BOOKBAG_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "BOOKBAG_PRICING": str(pricing),
        "BOOKBAG_PROVIDER_TIMEOUT": "2,2,5",
        "BOOKBAG_HOLD_TTL": "10",
        "BOOKBAG_SYNC_INTERVAL": "0.2",
        "BOOKBAG_SWEEP_INTERVAL": "0.5",
        "BOOKBAG_KEY_CACHE_TTL": "0.5",
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "BOOKBAG_ADMIN_TOKEN": "admin-test-token",
        "BOOKBAG_PORT": str(free_port()),
        # Never the working directory, even for a PostgreSQL URL.
        "BOOKBAG_SPOOL_PATH": str(tmp_path / "spool.jsonl"),
        # Concurrency tests fire bursts of 100-1,000 at one workspace; the per-workspace
        # in-flight cap (default 64) has its own tests (tests/test_inflight.py).
        "BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE": "0",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(env)


@contextmanager
def running(settings: Settings, clock: Clock | None = None) -> Iterator[RunningGateway]:
    gw = RunningGateway(settings, clock or SystemClock()).start()
    try:
        yield gw
    finally:
        gw.stop()


@contextmanager
def running_catalog(tmp: Path, pricing_text: str, **overrides: Any) -> Iterator[RunningGateway]:
    """A gateway on the embedded default whose pricing.toml (in `tmp`) is `pricing_text`;
    keyword arguments are BOOKBAG_* overrides."""
    pricing = tmp / "pricing.toml"
    pricing.write_text(pricing_text)
    with running(sqlite_settings(tmp, pricing, **overrides)) as gw:
        yield gw


def speaks_responses(text: str) -> str:
    """The test catalog with gpt-4o-mini marked as OpenAI itself: it speaks Responses too
    (relayed), where a custom `api_base` would speak chat only."""
    mini = 'aliases = ["GPT-4o mini", "gpt-4o-mini-2024-07-18"]\n'
    assert mini in text
    return text.replace(mini, mini + 'dialects = ["chat", "responses"]\n')


def db_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()

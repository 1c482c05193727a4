"""`bookbag-gateway serve` as a real subprocess: started, SIGKILLed, crashed, restarted.

    gw = GatewayProcess(tmp_path, env).start()         # waits for /healthz
    gw.url; gw.kill(); gw.start(BOOKBAG_TEST_CRASH_AT="after_settle")
    gw.wait_exit(10) == 137                              # a crash point was reached
    gw.stop()                                            # SIGTERM, then SIGKILL

Every start appends the process's output to `gateway.log` in the directory
(the canary test searches it). The embedded meter refuses to start while a
killed owner's lease runs (a few seconds): `start` keeps trying until it serves.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.metering.memory_accounts import LEASE
from tests.fake_provider import OPENAI_KEY
from tests.harness import db_rows, free_port

ADMIN_TOKEN = "admin-guarantees-token"
HOLD_TTL = 2.0  # seconds: also how long a dead process's Idempotency-Key claim blocks retries
SWEEP = 0.5


def base_env(tmp: Path, pricing: Path, database_url: str | None = None,
             **overrides: Any) -> dict[str, str]:
    """The environment of a gateway under test: short TTLs, nothing from the caller's BOOKBAG_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKBAG_")}
    env.update({
        "BOOKBAG_DATABASE_URL": database_url or f"sqlite:///{tmp / 'gateway.db'}",
        "BOOKBAG_PRICING": str(pricing),
        "BOOKBAG_PROVIDER_TIMEOUT": "1,1,1.5",
        "BOOKBAG_HOLD_TTL": str(HOLD_TTL),
        "BOOKBAG_SYNC_INTERVAL": "0.2",
        "BOOKBAG_SWEEP_INTERVAL": str(SWEEP),
        "BOOKBAG_KEY_CACHE_TTL": "0.5",
        "BOOKBAG_SHUTDOWN_GRACE": "3",
        "BOOKBAG_LOG_LEVEL": "warning",
        "BOOKBAG_ADMIN_TOKEN": ADMIN_TOKEN,
        "BOOKBAG_SPOOL_PATH": str(tmp / "spool.jsonl"),
        "OPENAI_API_KEY": OPENAI_KEY,
        # Load and fault runs fire bursts at one workspace; the in-flight cap is tested alone.
        "BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE": "0",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def command() -> list[str]:
    script = Path(sys.executable).parent / "bookbag-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


class GatewayProcess:
    def __init__(self, directory: Path, env: dict[str, str], *, workers: int = 1) -> None:
        self.dir = directory
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []  # return codes of the processes that ended

    def _lease_left(self) -> float:
        """Seconds until a killed embedded meter's lease on the database ends (0: none)."""
        url = self.env.get("BOOKBAG_DATABASE_URL", "")
        if not url.startswith("sqlite:///"):
            return 0.0
        try:
            rows = db_rows(Path(url.removeprefix("sqlite:///")),
                           f"SELECT expires_ms FROM leases WHERE name = '{LEASE}'")
        except sqlite3.Error:
            return 0.0
        return max((int(r[0]) / 1000 - time.time() for r in rows), default=0.0)

    def start(self, timeout: float = 60.0, **env: Any) -> GatewayProcess:
        """Start (again) with extra environment for this run only; returns once it serves."""
        deadline = time.monotonic() + timeout
        time.sleep(max(0.0, min(self._lease_left(), timeout)))  # a start before would only fail
        run_env = {**self.env, **{k: str(v) for k, v in env.items()}}
        args = [*command(), "serve", "--port", str(self.port)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        while True:
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(args, env=run_env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            self.starts += 1
            while self.proc.poll() is None:
                try:
                    if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the gateway did not start; see {self.log}")
                time.sleep(0.05)
            self.exits.append(self.proc.returncode)  # e.g. the killed owner's lease still runs
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway kept exiting; see {self.log}")
            time.sleep(0.3)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a `--workers` supervisor and its workers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.exits.append(self.proc.returncode)
        self.proc = None

    def wait_exit(self, timeout: float) -> int | None:
        """The return code once the process ended by itself (a crash point), else None."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exits.append(code)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.exits.append(self.proc.returncode)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

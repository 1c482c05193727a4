"""The servers of one benchmark run: the fake provider, the reference relay, the gateways.

Every gateway is the real `bookbag-gateway serve` (uvloop, httptools, access
log off, one worker) on its own database, with a workspace holding a huge
balance (enterprise plan, 10^12 credits) and a pricing.toml pointing
`gpt-4o-mini` at the fake provider (`gpt-4o-mini-50ms` at its slow port).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import BENCH, ROOT, Proc, free_port, spawn, wait_first_reply, wait_ready_line

GATEWAY_CORE = 0
LOAD_CORE = 1
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark in one short sentence."}]


def body(model: str, stream: bool) -> bytes:
    import orjson

    data: dict[str, object] = {"model": model, "messages": MESSAGES}
    if stream:
        data["stream"] = True
        data["stream_options"] = {"include_usage": True}
    return orjson.dumps(data)


def pricing(fast: int, slow: int, *, anthropic: bool) -> str:
    text = f"""
[models."gpt-4o-mini"]
provider = "openai"
credits = 1
api_base = "http://127.0.0.1:{fast}/v1"

[models."gpt-4o-mini-50ms"]
provider = "openai"
credits = 1
upstream = "gpt-4o-mini"
api_base = "http://127.0.0.1:{slow}/v1"

[plans.free]
credits = 100

[plans.enterprise]
credits = "custom"
"""
    if anthropic:
        text += f"""
[models."claude-haiku-4-5"]
provider = "anthropic"
credits = 2
upstream = "claude-haiku-4-5-20251001"
api_base = "http://127.0.0.1:{fast}"
"""
    return text


def redis_meter_available() -> bool:
    return importlib.util.find_spec("gateway.metering.redis") is not None


def redis_reachable(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "bookbag-gateway"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "gateway", "serve"]


@dataclass
class Gateway:
    name: str
    proc: Proc
    url: str
    key: str
    rss_before_litellm_mb: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def auth(self) -> str:
        return f"Bearer {self.key}"


def create_workspace(db_url: str, pricing_path: Path, source: Path | None = None,
                     caps: bool = False) -> str:
    """A workspace with 10^12 credits and its key, made by the gateway's own `Accounts`;
    with `caps`, the key is bound to an agent and both have a spend cap (never reached: the
    hot path pays for checking them, bench/README.md).

    Runs in a child process importing `gateway` from `source` (default: this checkout),
    so the schema is the one the gateway under test expects.
    """
    path = f"{source}{os.pathsep}{ROOT}" if source else str(ROOT)
    out = subprocess.run([sys.executable, "-m", "bench.stack", "workspace", db_url,
                          str(pricing_path), *(["caps"] if caps else [])],
                         capture_output=True, text=True, check=False, cwd=pricing_path.parent,
                         env={**os.environ, "PYTHONPATH": path})
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"creating the bench workspace failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def _workspace_here(db_url: str, pricing_path: Path, caps: bool = False) -> str:
    from gateway.accounts.workspaces import Accounts
    from gateway.catalog import load
    from gateway.clock import SystemClock
    from gateway.storage.database import create_schema, make_engine

    engine = make_engine(db_url)
    try:
        create_schema(engine)
        accounts = Accounts(engine, load(pricing_path), SystemClock())
        ws = accounts.create_workspace("bench", "enterprise", custom_allotment=10**12)
        if not caps:
            return accounts.create_key(ws.id).key
        created = accounts.create_key(ws.id, agent_id="bench")
        accounts.set_cap(ws.id, "key", created.id, 10**13)
        accounts.set_cap(ws.id, "agent", "bench", 10**13)
        return created.key
    finally:
        engine.dispose()


def start_fake(workdir: Path) -> tuple[Proc, int, int]:
    proc = spawn("fake", [sys.executable, str(BENCH / "fake.py"), "--port", "0",
                          "--slow-port", "0", "--delay-ms", "50"], LOAD_CORE, workdir)
    fast, slow = wait_ready_line(proc)
    return proc, fast, slow


def start_relay(workdir: Path, fast: int, slow: int) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn("reference", [sys.executable, str(BENCH / "relay.py"), "--port", str(port),
                               "--upstream", f"http://127.0.0.1:{fast}",
                               "--slow-upstream", f"http://127.0.0.1:{slow}"],
                 GATEWAY_CORE, workdir)
    url = f"http://127.0.0.1:{port}"
    wait_first_reply(proc, url + "/v1/chat/completions", body("gpt-4o-mini", False), {})
    return proc, url


def start_gateway(name: str, workdir: Path, pricing_text: str,
                  env: dict[str, str] | None = None, source: Path | None = None,
                  caps: bool = False, workers: int = 1,
                  cores: int | str = GATEWAY_CORE) -> Gateway:
    """`bookbag-gateway serve` on core 0; `source`: a directory holding another `gateway/`;
    `workers`: `serve --workers N`, on `cores` (a taskset list, e.g. "0,1")."""
    pricing_path = workdir / f"{name}-pricing.toml"
    pricing_path.write_text(pricing_text)
    db_url = f"sqlite:///{workdir / (name + '.db')}"
    key = create_workspace(db_url, pricing_path, source, caps)
    port = free_port()
    extra = {"PYTHONPATH": str(source)} if source else {}
    command = [sys.executable, "-m", "gateway", "serve"] if source else gateway_command()
    if workers > 1:
        command += ["--workers", str(workers)]
    proc = spawn(name, command, cores, workdir, {
        "BOOKBAG_DATABASE_URL": db_url, "BOOKBAG_PRICING": str(pricing_path),
        "BOOKBAG_PORT": str(port), "BOOKBAG_HOST": "127.0.0.1", "BOOKBAG_LOG_LEVEL": "warning",
        "OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-ant-bench", **extra,
        **(env or {}),
    })
    url = f"http://127.0.0.1:{port}"
    try:
        wait_first_reply(proc, url + "/v1/chat/completions", body("gpt-4o-mini", False),
                         {"Authorization": f"Bearer {key}"})
    except BaseException:
        proc.stop()  # the caller never gets it: do not leave it running
        raise
    return Gateway(name, proc, url, key)


if __name__ == "__main__" and sys.argv[1:2] == ["workspace"]:
    print(_workspace_here(sys.argv[2], Path(sys.argv[3]), sys.argv[4:5] == ["caps"]))

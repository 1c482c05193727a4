"""The processes a benchmark run starts, and what /proc says about them.

Each process is started pinned to a core (`taskset -c N`, which execs, so the
pid is the server's own) and stopped by its own pid only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float  # perf_counter at spawn
    cold_start_s: float | None = None
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """utime + stime so far of the process (all its threads) and of its live descendants
        (`serve --workers N`: uvicorn's supervisor and its N worker processes)."""
        return sum(_cpu_of(pid) for pid in [self.pid, *_descendants(self.pid)])

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _cpu_of(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # exited between the listing and the read
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            out += [child, *_descendants(child)]
    return out


def spawn(name: str, argv: list[str], core: int | str, workdir: Path,
          env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    out = log.open("wb")
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    popen = subprocess.Popen(["taskset", "-c", str(core), *argv], stdout=out,
                             stderr=subprocess.STDOUT, env=full_env, cwd=workdir)
    out.close()
    return Proc(name, popen, log, started)


def wait_ready_line(proc: Proc, timeout: float = 20.0) -> list[int]:
    """Ports a bench server printed on its `READY ...` line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.log.read_text(errors="replace").splitlines():
            if line.startswith("READY"):
                return [int(p) for p in line.split()[1:]]
        if not proc.alive():
            break
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not start:\n{proc.tail()}")


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_first_reply(proc: Proc, url: str, body: bytes, headers: dict[str, str],
                     timeout: float = 60.0) -> float:
    """Seconds from the process's spawn to its first 200 on `url` (polling every 5 ms)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        try:
            status, data = post(url, body, headers, timeout=5)
            if status == 200:
                proc.cold_start_s = time.perf_counter() - proc.started
                return proc.cold_start_s
            last = f"HTTP {status}: {data[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.005)
    raise RuntimeError(f"{proc.name} never answered 200 ({last}):\n{proc.tail()}")


def python() -> str:
    return sys.executable

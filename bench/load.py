"""Load: `wrk` for throughput and latency percentiles, and a socket probe for TTFB / TTLB.

wrk (C, one thread on the load core) keeps N connections each with one request
in flight and records every request's latency, so p50/p99 are real
percentiles. `bench/load.lua` makes it POST a fixed body and print a JSON
summary. The probe sends requests one at a time on one keep-alive socket and
times the first byte of the response (for a stream: the gateway sends its
headers with the first event) and the last byte.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import BENCH


@dataclass(frozen=True)
class Target:
    """Where one variant is reached: a URL, the body file to POST, an Authorization header."""

    url: str
    body: Path
    auth: str = ""


@dataclass
class Result:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_req(self) -> float | None:
        if self.cpu_s is None or not self.requests:
            return None
        return self.cpu_s * 1000 / self.requests


def ensure_wrk() -> str:
    """The wrk binary; installed with apt when running as root, else explained."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk (apt-get install -y wrk) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is needed: `apt-get install -y wrk` (Debian/Ubuntu) or "
                     "`brew install wrk`, then run the benchmark again.")


def wrk(target: Target, connections: int, seconds: float, core: int = 1) -> Result:
    argv = ["taskset", "-c", str(core), ensure_wrk(), "-t1", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(BENCH / "load.lua"), target.url,
            "--", str(target.body), target.auth]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    data = json.loads(line[6:])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Result(requests=data["requests"], seconds=data["duration_us"] / 1e6, errors=errors,
                  p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000)


@dataclass
class Probe:
    ttfb_ms: float
    ttlb_ms: float
    failures: int


def _request_bytes(target: Target) -> tuple[str, int, bytes]:
    parts = urlsplit(target.url)
    body = target.body.read_bytes()
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if target.auth:
        head.append(f"Authorization: {target.auth}")
    return parts.hostname or "127.0.0.1", parts.port or 80, \
        ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _read_reply(sock: socket.socket) -> tuple[float, bytes]:
    """(perf_counter at the first byte, the whole reply) of one HTTP/1.1 response."""
    buf = sock.recv(65536)
    first = time.perf_counter()
    if not buf:
        raise ConnectionError("closed")
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    end = buf.index(b"\r\n\r\n") + 4
    head = buf[:end].lower()
    if b"content-length:" in head:
        at = head.index(b"content-length:") + 15
        length = int(head[at : head.index(b"\r\n", at)])
        while len(buf) < end + length:
            buf += sock.recv(65536)
    else:  # chunked
        while not (buf.endswith(b"\r\n0\r\n\r\n") or buf[end:] == b"0\r\n\r\n"):
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed mid-reply")
            buf += more
    return first, buf


def probe(target: Target, count: int) -> Probe:
    """p50 time to first and last byte, one request at a time on a keep-alive socket."""
    host, port, request = _request_bytes(target)
    ttfb: list[float] = []
    ttlb: list[float] = []
    failures = 0
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            first, reply = _read_reply(sock)
            done = time.perf_counter()
            if not reply.startswith(b"HTTP/1.1 200"):
                failures += 1
                continue
            ttfb.append((first - start) * 1000)
            ttlb.append((done - start) * 1000)
    finally:
        sock.close()
    if not ttfb:
        return Probe(float("nan"), float("nan"), failures)
    return Probe(statistics.median(ttfb), statistics.median(ttlb), failures)

"""A redis-server of the test's own, on a free loopback port in a temporary directory.

    server = RedisServer(tmp_path, aof=True).start()
    server.url                     # redis://127.0.0.1:PORT/0
    server.pause(); server.resume()   # SIGSTOP / SIGCONT: a hung Redis
    server.kill(); server.start()     # SIGKILL and a fresh start on the same port and dir
    server.restart()                  # a clean shutdown (AOF flushed) and a start
    server.stop()

Without AOF the server keeps nothing across a restart (no RDB snapshots either):
a restart is a Redis that lost its data.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.conftest import service_missing
from tests.harness import free_port


class RedisServer:
    def __init__(self, directory: Path, *, aof: bool = False, fsync: str = "always",
                 extra: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server (apt-get install redis-server)")
        assert binary is not None
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.fsync = fsync
        self.extra = extra or []  # more redis-server arguments (cluster mode: tests/redis_cluster.py)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", self.fsync, "--maxmemory-policy", "noeviction",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
                time.sleep(0.02)
        finally:
            client.close()

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, "redis-server is not running"
        self.proc.send_signal(sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: what was not fsynced is lost (everything, without AOF)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): with AOF on, everything written survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

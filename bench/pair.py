"""Two gateway processes serving one deployment (issue 17: two gateways on a Redis Cluster).

    gw = start_pair("redis-cluster-x2", workdir, pricing, {"BOOKBAG_REDIS_URL": url})
    measure(target, gw.proc, 64, 2.0)    # half the connections on each process

The second process shares the first's database, workspace and key; both run on the
gateway core, as two workers would. Its `Proc` is a `PairProc`: CPU and memory are the
two processes' sums, so CPU per request compares with a single process's directly.
wrk runs once per process (half the connections each, at the same time); the result
sums their requests and keeps the worse of their latency percentiles.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from bench.load import Result, Target, wrk
from bench.procs import Proc, free_port, spawn, wait_first_reply
from bench.stack import GATEWAY_CORE, Gateway, body, gateway_command, start_gateway


class PairProc(Proc):
    """Two processes measured as one (CPU and memory summed)."""

    def __init__(self, first: Proc, second: Proc, urls: list[str]) -> None:
        super().__init__(first.name, first.popen, first.log, first.started,
                         first.cold_start_s)
        self.notes = dict(first.notes)
        self.procs = (first, second)
        self.urls = urls

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)

    def rss_mb(self) -> float:
        return sum(p.rss_mb() for p in self.procs)

    def peak_rss_mb(self) -> float:
        return sum(p.peak_rss_mb() for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def start_pair(name: str, workdir: Path, pricing_text: str, env: dict[str, str]) -> Gateway:
    first = start_gateway(name, workdir, pricing_text, env)
    port = free_port()
    second = spawn(name + "-2", gateway_command(), GATEWAY_CORE, workdir, {
        "BOOKBAG_DATABASE_URL": f"sqlite:///{workdir / (name + '.db')}",
        "BOOKBAG_PRICING": str(workdir / f"{name}-pricing.toml"),
        "BOOKBAG_PORT": str(port), "BOOKBAG_HOST": "127.0.0.1", "BOOKBAG_LOG_LEVEL": "warning",
        "OPENAI_API_KEY": "sk-bench", **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_first_reply(second, url + "/v1/chat/completions", body("gpt-4o-mini", False),
                         {"Authorization": first.auth})
    except BaseException:
        second.stop()
        first.proc.stop()
        raise
    first.proc = PairProc(first.proc, second, [first.url, url])
    return first


def measure(target: Target, proc: PairProc, conns: int, seconds: float) -> Result:
    """wrk on both processes at once, half the connections each; CPU of both."""
    results: list[Result] = []
    first = target.url.split("/v1/", 1)[0]
    targets = [replace(target, url=target.url.replace(first, url, 1)) for url in proc.urls]

    def one(t: Target) -> None:
        results.append(wrk(t, max(1, conns // 2), seconds))

    before = proc.cpu_seconds()
    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = proc.cpu_seconds() - before
    if len(results) != len(targets):
        raise RuntimeError("a wrk run of the gateway pair failed")
    return Result(requests=sum(r.requests for r in results),
                  seconds=max(r.seconds for r in results),
                  errors=sum(r.errors for r in results),
                  p50_ms=max(r.p50_ms for r in results), p99_ms=max(r.p99_ms for r in results),
                  cpu_s=cpu)

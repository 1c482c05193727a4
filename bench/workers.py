"""`serve --workers N`: CPU per request and req/s at 1 and N workers, embedded and Redis.

    python bench/workers.py                  # 1 and 2 workers, embedded and Redis (~3 min)
    python bench/workers.py --workers 3 --seconds 10

Each variant is the real `bookbag-gateway serve` on its own SQLite database (and,
for Redis, its own Redis db), started alone, warmed, measured and stopped before
the next starts, so no idle gateway shares the cores. One worker is pinned to
core 0 as in `bench/run.py`; N workers get cores 0..N-1 (`--cores` overrides).
On a 2-core machine the second core is also the load generator's (wrk) and the
fake provider's: the report says how much CPU the gateway got, and CPU ms per
request (utime + stime of the supervisor and every worker, from /proc) is the
figure that does not depend on how the cores were shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Result, Target, ensure_wrk, wrk
from bench.procs import Proc
from bench.stack import LOAD_CORE, body, pricing, redis_reachable, start_fake, start_gateway

SCENARIOS = (("json", 16), ("json", 64), ("stream", 64))
PAUSE_S = 1.5


@dataclass(frozen=True)
class Variant:
    name: str
    workers: int
    cores: str
    env: dict[str, str]
    source: Path | None = None


def variants(workers: int, cores: str | None, redis_url: str | None,
             sources: list[str]) -> list[Variant]:
    many = cores or ",".join(str(c) for c in range(min(workers, os.cpu_count() or 1)))
    out = [Variant("embedded", 1, "0", {}), Variant("embedded", workers, many, {})]
    for spec in sources:  # "LABEL=DIR": N workers importing gateway/ from another tree
        label, _, directory = spec.partition("=")
        out.append(Variant(f"embedded @{label}", workers, many, {}, Path(directory).resolve()))
    if redis_url:
        out += [Variant("redis", 1, "0", {"BOOKBAG_REDIS_URL": redis_url}),
                Variant("redis", workers, many, {"BOOKBAG_REDIS_URL": redis_url})]
    return out


def meter_line(proc: Proc) -> str:
    """The meter the gateway's startup summary names."""
    for line in proc.log.read_text(errors="replace").splitlines():
        if line.strip().startswith("meter "):
            return line.split()[1]
    return "?"


def measure(target: Target, proc: Proc, conns: int, seconds: float) -> Result:
    before = proc.cpu_seconds()
    result = wrk(target, conns, seconds)
    result.cpu_s = proc.cpu_seconds() - before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="the N of the N-worker rows")
    parser.add_argument("--cores", help="taskset list for the N-worker gateways (default 0..N-1)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--source", action="append", default=[], metavar="LABEL=DIR",
                        help="also N embedded workers importing gateway/ from DIR (A/B)")
    args = parser.parse_args()
    ensure_wrk()
    redis_url = None if args.no_redis else (
        os.environ.get("BOOKBAG_BENCH_WORKERS_REDIS") or "redis://127.0.0.1:6379/12")
    notes: list[str] = []
    if redis_url and not redis_reachable(redis_url):
        notes.append(f"Redis not measured: {redis_url} does not answer PING")
        redis_url = None
    os.sched_setaffinity(0, {LOAD_CORE})
    started = datetime.now(UTC)
    rows: list[tuple[Variant, str, str, int, Result]] = []
    with tempfile.TemporaryDirectory(prefix="bookbag-bench-workers-") as tmp:
        workdir = Path(tmp)
        fake, fast, slow = start_fake(workdir)
        try:
            plain = pricing(fast, slow, anthropic=False)
            bodies = {}
            for mode in ("json", "stream"):
                bodies[mode] = workdir / f"{mode}.json"
                bodies[mode].write_bytes(body("gpt-4o-mini", mode == "stream"))
            for i, v in enumerate(variants(args.workers, args.cores, redis_url, args.source)):
                print(f"{v.name}, {v.workers} worker(s) on cores {v.cores} ...", flush=True)
                if "BOOKBAG_REDIS_URL" in v.env:
                    _flush_redis(v.env["BOOKBAG_REDIS_URL"])
                gw = start_gateway(f"w{i}-{v.workers}", workdir, plain, v.env, v.source,
                                   workers=v.workers, cores=v.cores)
                try:
                    meter = meter_line(gw.proc)
                    for mode in ("json", "stream"):  # warm every worker's pools
                        wrk(Target(gw.url + "/v1/chat/completions", bodies[mode], gw.auth),
                            16, max(1.0, args.seconds / 2))
                    for mode, conns in SCENARIOS:
                        # The requests wrk left in flight when it stopped still hold their
                        # in-flight slots (64 per worker and workspace) for a moment; a run
                        # started at once could be refused with 429 for them.
                        time.sleep(PAUSE_S)
                        target = Target(gw.url + "/v1/chat/completions", bodies[mode], gw.auth)
                        rows.append((v, meter, mode, conns,
                                     measure(target, gw.proc, conns, args.seconds)))
                finally:
                    gw.proc.stop()
        finally:
            fake.stop()
    print()
    print(render(rows, started, args, notes))


def _flush_redis(url: str) -> None:
    """A fresh Redis db for each Redis variant (its balances are a projection of its SQLite)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def render(rows: list[tuple[Variant, str, str, int, Result]], started: datetime,
           args: argparse.Namespace, notes: list[str]) -> str:
    cmd = "python bench/workers.py " + " ".join(sys.argv[1:])
    out = [f"`{cmd.strip()}`, started {started:%Y-%m-%d %H:%M} UTC, {args.seconds:g} s per run, "
           f"{os.cpu_count()} cores (wrk and the fake provider on core {LOAD_CORE}), "
           f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}", "",
           "| store | workers | cores | meter | scenario | req/s | p50 ms | p99 ms | CPU ms/req "
           "| req/s per CPU-second | gateway CPU (cores) | errors |",
           "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v, meter, mode, conns, r in rows:
        cpu = r.cpu_ms_per_req or 0.0
        per_cpu = 1000 / cpu if cpu else 0.0
        busy = (r.cpu_s or 0.0) / r.seconds if r.seconds else 0.0
        out.append(f"| {v.name} | {v.workers} | {v.cores} | {meter} | {mode} @{conns} | "
                   f"{r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu:.3f} | {per_cpu:,.0f} | "
                   f"{busy:.2f} | {r.errors} |")
    out += [f"- {n}" for n in notes]
    return "\n".join(out)


if __name__ == "__main__":
    main()

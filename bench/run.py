"""Benchmark the gateway against a direct call and a bare relay, all in one run.

    python bench/run.py            # full matrix (~6 min)
    python bench/run.py --quick    # the headline scenarios (about 3 min)

Layout (2 cores): the gateway, the reference relay and their threads on core 0
(`taskset -c 0`); wrk, the fake provider and this script on core 1. Variants:
direct (wrk -> fake provider), reference (bare Starlette + aiohttp relay),
embedded (metering on, SQLite memory meter, synchronous=FULL), metering off,
Redis (when the Redis meter exists and BOOKBAG_REDIS_URL answers), Redis cluster
(`--cluster`: three primaries with a replica each, started here; one gateway process and,
as `redis cluster x2`, two sharing it, bench/pair.py). Scenarios:
JSON / stream x 1 / 16 / 64 in flight x 0 ms / 50 ms provider, each run back
to back for every variant so that ratios come from the same minute. Then the
dialects (bench/dialects.py; `--no-dialects` skips them): the Messages and Responses
relays, the Claude route and a Messages request to an OpenAI model, each beside the
chat relay of the same gateway.
See bench/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import dialects, pair
from bench.load import Result, Target, ensure_wrk, probe, wrk
from bench.procs import Proc
from bench.report import Run, machine, render
from bench.stack import (
    LOAD_CORE,
    Gateway,
    body,
    pricing,
    redis_meter_available,
    redis_reachable,
    start_fake,
    start_gateway,
    start_relay,
)

MODES = ("json", "stream")


def scenarios(quick: bool) -> list[tuple[str, int, int]]:
    """(mode, provider delay ms, in flight)."""
    out = [(m, 0, c) for c in (1, 16, 64) for m in MODES]
    out += [(m, 50, c) for c in ((64,) if quick else (1, 16, 64)) for m in MODES]
    return out


def measure(target: Target, proc: Proc, conns: int, seconds: float) -> Result:
    if isinstance(proc, pair.PairProc):  # two gateway processes: wrk on each, CPU of both
        return pair.measure(target, proc, conns, seconds)
    before = proc.cpu_seconds()
    result = wrk(target, conns, seconds)
    result.cpu_s = proc.cpu_seconds() - before
    return result


def claude_figures(run: Run, workdir: Path, fast: int, slow: int, seconds: float) -> None:
    """A gateway whose catalog has a Claude model: start, RSS, one call, load. The route was
    litellm's until the native Anthropic relay; the figures show that litellm stays unloaded."""
    gw = start_gateway("claude-route", workdir, pricing(fast, slow, anthropic=True))
    try:
        run.cold_start["embedded + Claude in catalog"] = gw.proc.cold_start_s or 0.0
        time.sleep(1.0)
        run.memory["Claude: before any Claude call"] = (gw.proc.rss_mb(), gw.proc.peak_rss_mb())
        started = time.perf_counter()
        from bench.procs import post

        status, reply = post(gw.url + "/v1/chat/completions", body("claude-haiku-4-5", False),
                             {"Authorization": gw.auth}, timeout=60)
        if status != 200:
            raise RuntimeError(f"the Claude route failed: HTTP {status} {reply[:300]!r}")
        run.notes.append(f"first Claude call: {(time.perf_counter() - started) * 1000:.0f} ms")
        run.memory["Claude: after one Claude call"] = (gw.proc.rss_mb(), gw.proc.peak_rss_mb())
        for mode in MODES:
            path = workdir / f"anthropic-{mode}.json"
            path.write_bytes(body("claude-haiku-4-5", mode == "stream"))
            target = Target(gw.url + "/v1/chat/completions", path, gw.auth)
            run.rows[(f"claude-{mode}", 0, 16)] = {
                "claude route (own gateway)": measure(target, gw.proc, 16, seconds)}
        run.memory["Claude: after load"] = (gw.proc.rss_mb(), gw.proc.peak_rss_mb())
    finally:
        gw.proc.stop()


def start_gateways(run: Run, workdir: Path, fast: int, slow: int, only: set[str] | None,
                   sources: list[str], redis_sources: Sequence[str] = (),
                   cluster_url: str | None = None) -> list[Gateway]:
    plain = pricing(fast, slow, anthropic=False)
    wanted: list[tuple[str, dict[str, str]]] = [
        ("embedded", {}), ("embedded + caps", {}), ("metering off", {"BOOKBAG_METERING": "off"}),
        ("embedded normal-sync", {"BOOKBAG_SQLITE_SYNCHRONOUS": "normal"})]
    if cluster_url:  # --cluster: the Redis meter on a three-primary Redis Cluster
        wanted.append(("redis cluster", {"BOOKBAG_REDIS_URL": cluster_url}))
        wanted.append(("redis cluster x2", {"BOOKBAG_REDIS_URL": cluster_url}))  # 2 processes
    redis_url = os.environ.get("BOOKBAG_REDIS_URL") or "redis://127.0.0.1:6379/15"
    if not redis_meter_available():
        run.notes.append("Redis: not yet (gateway/metering/redis.py does not exist)")
    elif not redis_reachable(redis_url):
        run.notes.append(f"Redis: not measured ({redis_url} does not answer PING)")
    else:
        wanted.append(("redis", {"BOOKBAG_REDIS_URL": redis_url}))
    gateways: list[Gateway] = []
    for spec in sources:  # "label=DIR": an embedded gateway run from another source tree
        label, _, directory = spec.partition("=")
        gw = start_gateway(f"src-{label}", workdir, plain, {}, Path(directory).resolve())
        gw.name = f"embedded @{label}"
        gateways.append(gw)
        run.cold_start[gw.name] = gw.proc.cold_start_s or 0.0
    for i, spec in enumerate(redis_sources):  # the Redis meter from another tree: its own db
        label, _, directory = spec.partition("=")
        url = f"{redis_url.rsplit('/', 1)[0]}/{14 - i}"
        gw = start_gateway(f"src-redis-{label}", workdir, plain, {"BOOKBAG_REDIS_URL": url},
                           Path(directory).resolve())
        gw.name = f"redis @{label}"
        gateways.append(gw)
        run.cold_start[gw.name] = gw.proc.cold_start_s or 0.0
    for name, env in wanted:
        if only is not None and name not in only:
            continue
        if only is None and name in ("embedded + caps", "embedded normal-sync"):  # by name only
            continue
        try:
            gw = pair.start_pair(name.replace(" ", "-"), workdir, plain, env) \
                if name.endswith(" x2") else \
                start_gateway(name.replace(" ", "-").replace("+", "caps"), workdir, plain, env,
                              caps=name == "embedded + caps")
        except RuntimeError as exc:
            if name != "redis":
                raise
            last = [ln for ln in str(exc).splitlines() if ln.strip()][-2:]
            run.notes.append(f"Redis: not yet (the gateway did not start: {' '.join(last)})")
            continue
        gw.name = name
        gateways.append(gw)
        run.cold_start[name] = gw.proc.cold_start_s or 0.0
    return gateways


def main() -> None:
    parser = argparse.ArgumentParser(description="Bookbag Gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="headline scenarios, about 3 minutes")
    parser.add_argument("--seconds", type=float, help="length of each wrk run (whole seconds)")
    parser.add_argument("--probe", type=int, help="sequential requests per TTFB probe")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--only", help="comma-separated gateway variants: embedded,"
                        "embedded + caps,embedded normal-sync,metering off,redis,redis cluster,"
                        "redis cluster x2")
    parser.add_argument("--cluster", action="store_true",
                        help="also run the Redis meter on a Redis Cluster this script starts "
                             "(six redis-server processes: 3 primaries + 1 replica each)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="passes over the dialect scenarios; their ratios are the median "
                             "of the passes' (default 3)")
    parser.add_argument("--no-dialects", action="store_true",
                        help="skip the dialect scenarios (Messages, Responses, the Claude route)")
    parser.add_argument("--no-litellm", action="store_true",
                        help="skip the gateway with Claude in its catalog (start, memory, load)")
    parser.add_argument("--source", action="append", default=[], metavar="LABEL=DIR",
                        help="also run an embedded gateway importing gateway/ from DIR "
                             "(A/B a change in the same run); repeatable")
    parser.add_argument("--source-redis", action="append", default=[], metavar="LABEL=DIR",
                        help="also run a Redis-metered gateway importing gateway/ from DIR "
                             "(on Redis db 14, 13, ...); repeatable")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    probe_n = args.probe or (200 if args.quick else 2000)
    only = {v.strip() for v in args.only.split(",") if v.strip()} if args.only is not None \
        else None
    wrk_path = ensure_wrk()
    if len(os.sched_getaffinity(0)) < 2:
        print("warning: fewer than 2 cores available; gateway and load share one", file=sys.stderr)
    os.sched_setaffinity(0, {LOAD_CORE})
    run = Run(quick=args.quick, seconds=seconds, machine=machine(wrk_path))
    started = time.monotonic()
    procs: list[Proc] = []
    stops: list[Callable[[], None]] = []  # after the processes: the cluster
    with tempfile.TemporaryDirectory(prefix="bookbag-bench-") as tmp:
        workdir = Path(tmp)
        try:
            fake, fast, slow = start_fake(workdir)
            procs.append(fake)
            relay, relay_url = start_relay(workdir, fast, slow)
            procs.append(relay)
            run.cold_start["reference relay"] = relay.cold_start_s or 0.0
            cluster_url = None
            if args.cluster:
                from tests.redis_cluster import RedisCluster

                cluster = RedisCluster(workdir / "cluster").start()
                stops.append(cluster.stop)
                cluster_url = cluster.url
            gateways = start_gateways(run, workdir, fast, slow, only, args.source,
                                      args.source_redis, cluster_url)
            procs += [g.proc for g in gateways]
            bodies = {}
            for model in ("gpt-4o-mini", "gpt-4o-mini-50ms"):
                for mode in MODES:
                    path = workdir / f"{model}-{mode}.json"
                    path.write_bytes(body(model, mode == "stream"))
                    bodies[(model, mode)] = path

            def targets(mode: str, delay: int) -> list[tuple[str, Target, Proc]]:
                port, plain = (slow if delay else fast), bodies[("gpt-4o-mini", mode)]
                out = [("direct", Target(f"http://127.0.0.1:{port}/v1/chat/completions", plain),
                        fake),
                       ("reference", Target(relay_url + ("/slow" if delay else "")
                                            + "/v1/chat/completions", plain), relay)]
                model = "gpt-4o-mini-50ms" if delay else "gpt-4o-mini"
                out += [(g.name, Target(g.url + "/v1/chat/completions", bodies[(model, mode)],
                                        g.auth), g.proc) for g in gateways]
                return out

            print(f"warming up ({', '.join(g.name for g in gateways)}) ...", flush=True)
            for mode in MODES:
                for name, target, proc in targets(mode, 0):
                    if name != "direct":  # the fake provider needs no warming
                        measure(target, proc, 16, max(1.0, seconds / 2))
            for mode in MODES:
                for name, target, _ in targets(mode, 0):
                    run.probes[(name, mode)] = probe(target, probe_n)
            for mode, delay, conns in scenarios(args.quick):
                print(f"{mode:6} provider {delay:2} ms, {conns:2} in flight ...", flush=True)
                run.rows[(mode, delay, conns)] = {
                    name: measure(target, proc, conns, seconds)
                    for name, target, proc in targets(mode, delay)}
            for name, proc in [("reference relay", relay)] + [(g.name, g.proc) for g in gateways]:
                run.memory[name] = (proc.rss_mb(), proc.peak_rss_mb())
            if not args.no_dialects:
                print("dialects ...", flush=True)
                dialect_gateways = dialects.start(run, workdir, fast, slow, args.source)
                procs += [g.proc for g in dialect_gateways]
                dialects.measure_all(run, workdir, dialect_gateways, relay, relay_url, seconds,
                                      max(1, args.rounds))
                for gw in dialect_gateways:
                    gw.proc.stop()
            if not args.no_litellm:
                print("Claude in the catalog ...", flush=True)
                try:
                    claude_figures(run, workdir, fast, slow, seconds)
                except RuntimeError as exc:
                    run.notes.append(f"the Claude route failed: {str(exc)[-600:]}")
        except (RuntimeError, OSError) as exc:
            run.notes.append(f"the run stopped early: {str(exc)[-2000:]}")
        finally:
            for proc in reversed(procs):
                proc.stop()
            for stop in stops:
                stop()
    run.elapsed_s = time.monotonic() - started
    run.machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(render(run))
    if args.json:
        args.json.write_text(json.dumps(run.as_json(), indent=2, default=str))


if __name__ == "__main__":
    main()

"""Why a request costs more CPU when the provider is slow: per-request counts, not timings.

Starts the same stack as `run.py` (fake provider and wrk on core 1, one process under test
on core 0) and, for each scenario, drives wrk and reads from `/proc` around the run, per
request: CPU ms of the whole process and of its event-loop thread alone, the context
switches of every thread (voluntary: it blocked and was woken, e.g. a wait in epoll or on
the writer's queue; involuntary: preempted), and the ledger commits (the group writer's
batches, from `/metrics`). `--strace` also counts the system calls per request
(`strace -c -f` attached for the run: it slows the process, so its own run's CPU figures
are not comparable; the counts are).

    python bench/wakeups.py [--variant embedded|metering off|reference] [--seconds 5]
                            [--mode json|stream] [--strace]

No timing is asserted anywhere; this prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Target, ensure_wrk, wrk
from bench.procs import CLK_TCK, Proc
from bench.stack import LOAD_CORE, body, pricing, start_fake, start_gateway, start_relay

VARIANTS = {"embedded": {}, "metering off": {"BOOKBAG_METERING": "off"},
            "embedded normal-sync": {"BOOKBAG_SQLITE_SYNCHRONOUS": "normal"}}
WATCHED = ("epoll_pwait", "epoll_wait", "futex", "fdatasync", "fsync", "pwrite64", "pread64")
SCENARIOS = (("0 ms provider, 1 in flight", "gpt-4o-mini", 1),
             ("0 ms provider, 64 in flight", "gpt-4o-mini", 64),
             ("50 ms provider, 64 in flight", "gpt-4o-mini-50ms", 64))


@dataclass
class Counters:
    cpu: float  # seconds, the whole process
    loop_cpu: float  # seconds, the main (event loop) thread
    loop_sys: float  # of which in the kernel (stime)
    threads: dict[str, float]  # seconds per thread name (the others)
    voluntary: int
    involuntary: int
    commits: float
    lag: float  # seconds summed over the commits (each: its oldest write queued -> committed)


def _thread_counts(pid: int) -> tuple[float, float, int, int, dict[str, float]]:
    loop_cpu, loop_sys, vol, invol = 0.0, 0.0, 0, 0
    threads: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
        except OSError:
            continue  # a thread that just ended
        vol += int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        invol += int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if task.name == str(pid):
            loop_cpu, loop_sys = cpu, int(fields[12]) / CLK_TCK
        else:
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            threads[name] = threads.get(name, 0.0) + cpu
    return loop_cpu, loop_sys, vol, invol, threads


def _commits(url: str | None) -> tuple[float, float]:
    if url is None:
        return 0.0, 0.0
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = []
    for what in ("count", "sum"):
        found = re.search(rf'^bookbag_ledger_write_lag_seconds_{what}\{{store="embedded"\}} (\S+)$',
                          text, re.M)
        out.append(float(found.group(1)) if found else 0.0)
    return out[0], out[1]


def counters(proc: Proc, url: str | None) -> Counters:
    loop_cpu, loop_sys, vol, invol, threads = _thread_counts(proc.pid)
    return Counters(proc.cpu_seconds(), loop_cpu, loop_sys, threads, vol, invol, *_commits(url))


def strace_counts(pid: int, seconds: float, target: Target, conns: int) -> tuple[int, dict[str, int]]:
    """(requests, calls per syscall name) with strace attached to every thread."""
    out = Path(tempfile.mkstemp(prefix="bookbag-strace-")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    try:
        result = wrk(target, conns, seconds)
    finally:
        tracer.terminate()
        tracer.wait(10)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    out.unlink()
    return result.requests, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=[*VARIANTS, "reference"], default="embedded")
    parser.add_argument("--mode", choices=("json", "stream"), default="json")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args()
    ensure_wrk()
    os.sched_setaffinity(0, {LOAD_CORE})
    with tempfile.TemporaryDirectory(prefix="bookbag-wakeups-") as tmp:
        workdir = Path(tmp)
        fake, fast, slow = start_fake(workdir)
        proc: Proc | None = None
        try:
            auth, metrics = "", None
            if args.variant == "reference":
                proc, url = start_relay(workdir, fast, slow)
            else:
                gw = start_gateway(args.variant.replace(" ", "-"), workdir,
                                   pricing(fast, slow, anthropic=False), VARIANTS[args.variant])
                proc, url, auth, metrics = gw.proc, gw.url, gw.auth, gw.url
            print(f"| {args.variant}, {args.mode} | req/s | CPU ms/req | loop thread CPU ms/req (kernel) "
                  "| voluntary switches/req | involuntary/req | ledger commits/req | mean commit lag ms "
                  "| other threads' CPU ms/req |"
                  + (" syscalls/req (strace run) |" if args.strace else ""))
            print("|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---|" if args.strace else ""))
            for name, model, conns in SCENARIOS:
                path = workdir / f"{model}-{args.mode}.json"
                path.write_bytes(body(model, args.mode == "stream"))
                slow = "/slow" if args.variant == "reference" and model.endswith("50ms") else ""
                target = Target(url + slow + "/v1/chat/completions", path, auth)
                wrk(target, conns, 1)  # warm
                before = counters(proc, metrics)
                result = wrk(target, conns, args.seconds)
                after = counters(proc, metrics)
                n = max(result.requests, 1)
                row = (f"| {name} | {result.rps:,.0f} ({result.errors} errors) "
                       f"| {(after.cpu - before.cpu) * 1000 / n:.3f} "
                       f"| {(after.loop_cpu - before.loop_cpu) * 1000 / n:.3f} "
                       f"({(after.loop_sys - before.loop_sys) * 1000 / n:.3f}) "
                       f"| {(after.voluntary - before.voluntary) / n:.2f} "
                       f"| {(after.involuntary - before.involuntary) / n:.2f} "
                       f"| {(after.commits - before.commits) / n:.2f} "
                       f"| {(after.lag - before.lag) * 1000 / max(after.commits - before.commits, 1):.2f} "
                       "| " + ", ".join(f"{k} {(v - before.threads.get(k, 0.0)) * 1000 / n:.3f}"
                                      for k, v in sorted(after.threads.items())
                                      if v > before.threads.get(k, 0.0)) + " |")
                if args.strace:
                    requests, calls = strace_counts(proc.pid, args.seconds, target, conns)
                    shown = [k for k in WATCHED if k in calls] + [
                        k for k, _ in sorted(calls.items(), key=lambda kv: -kv[1])[:4]
                        if k not in WATCHED]
                    per = max(requests, 1)
                    row += (f" all {sum(calls.values()) / per:.1f}: "
                            + ", ".join(f"{k} {calls[k] / per:.2f}" for k in shown) + " |")
                print(row, flush=True)
        finally:
            if proc is not None:
                proc.stop()
            fake.stop()


if __name__ == "__main__":
    main()

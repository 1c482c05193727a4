"""The benchmark's results and their one rendering: Markdown tables and the targets of issue 6."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.dialects import table as dialect_table
from bench.load import Probe, Result

Scenario = tuple[str, int, int]  # mode, provider delay ms, in flight
GATEWAY = "embedded"


@dataclass
class Run:
    quick: bool
    seconds: float
    machine: dict[str, str]
    rows: dict[Scenario, dict[str, Result]] = field(default_factory=dict)
    rounds: dict[Scenario, list[dict[str, Result]]] = field(default_factory=dict)  # repeated
    probes: dict[tuple[str, str], Probe] = field(default_factory=dict)
    cold_start: dict[str, float] = field(default_factory=dict)
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # (RSS, peak RSS) MB
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick, "seconds": self.seconds, "machine": self.machine,
            "rows": [{"mode": m, "delay_ms": d, "in_flight": c, "variant": name, **asdict(r),
                      "rps": r.rps, "cpu_ms_per_req": r.cpu_ms_per_req}
                     for (m, d, c), row in self.rows.items() for name, r in row.items()],
            "rounds": [{"mode": m, "delay_ms": d, "in_flight": c, "round": i, "variant": name,
                        **asdict(r), "rps": r.rps, "cpu_ms_per_req": r.cpu_ms_per_req}
                       for (m, d, c), each in self.rounds.items()
                       for i, row in enumerate(each) for name, r in row.items()],
            "probes": [{"variant": v, "mode": m, **asdict(p)} for (v, m), p in self.probes.items()],
            "cold_start_s": self.cold_start, "memory_mb": self.memory, "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }


def machine(wrk_path: str) -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    wrk_version = subprocess.run([wrk_path, "--version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0].strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _throughput(run: Run) -> list[str]:
    out = ["| scenario | variant | req/s | p50 ms | p99 ms | +p50 ms vs direct | × direct "
           "| × reference | CPU ms/req | req/s per CPU-second | CPU % of its core | errors |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (mode, delay, conns), row in run.rows.items():
        direct, ref = row.get("direct"), row.get("reference")
        label = f"{mode}, {delay} ms provider, {conns} in flight"
        for name, r in row.items():
            plus = r.p50_ms - direct.p50_ms if direct and name != "direct" else None
            x_direct = r.rps / direct.rps if direct and direct.rps and name != "direct" else None
            x_ref = r.rps / ref.rps if ref and ref.rps and name not in ("direct", "reference") \
                else None
            cpu_pct = r.cpu_s / r.seconds * 100 if r.cpu_s is not None and r.seconds else None
            per_cpu = 1000 / r.cpu_ms_per_req if r.cpu_ms_per_req else None
            out.append(f"| {label} | {name} | {r.rps:,.0f} | {_f(r.p50_ms)} | {_f(r.p99_ms)} | "
                       f"{_f(plus)} | {_f(x_direct)} | {_f(x_ref)} | {_f(r.cpu_ms_per_req, 3)} | "
                       f"{_f(per_cpu, 0)} | {_f(cpu_pct, 0)} | {r.errors} |")
            label = ""
    return out


def _probes(run: Run) -> list[str]:
    out = ["| variant | JSON TTFB | JSON TTLB | stream TTFB | stream TTLB "
           "| added JSON | added stream TTFB | added stream TTLB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    variants = list(dict.fromkeys(v for v, _ in run.probes))
    for v in variants:
        j, s = run.probes.get((v, "json")), run.probes.get((v, "stream"))
        dj, ds = run.probes.get(("direct", "json")), run.probes.get(("direct", "stream"))
        if not (j and s and dj and ds):
            continue
        added = ("| — | — | — |" if v == "direct" else
                 f"| {_f(j.ttlb_ms - dj.ttlb_ms, 3)} | {_f(s.ttfb_ms - ds.ttfb_ms, 3)} "
                 f"| {_f(s.ttlb_ms - ds.ttlb_ms, 3)} |")
        out.append(f"| {v} | {_f(j.ttfb_ms, 3)} | {_f(j.ttlb_ms, 3)} | {_f(s.ttfb_ms, 3)} "
                   f"| {_f(s.ttlb_ms, 3)} {added}")
    return out


def _best(run: Run, variant: str, mode: str) -> float | None:
    found = [row[variant].rps for (m, d, c), row in run.rows.items()
             if m == mode and d == 0 and c in (16, 64) and variant in row]
    return max(found) if found else None


def _best_per_cpu(run: Run, variant: str, mode: str) -> float | None:
    found = [1000 / row[variant].cpu_ms_per_req for (m, d, c), row in run.rows.items()
             if m == mode and d == 0 and c in (16, 64) and variant in row
             and row[variant].cpu_ms_per_req]
    return max(found) if found else None


def _best_vs_reference(run: Run, variant: str, mode: str) -> float | None:
    found = [row[variant].rps / row["reference"].rps for (m, d, c), row in run.rows.items()
             if m == mode and d == 0 and c in (16, 64) and variant in row
             and row.get("reference") and row["reference"].rps]
    return max(found) if found else None


def _cpu_vs_reference(run: Run, variant: str, mode: str) -> float | None:
    """The reference's CPU per request over the variant's (same scenario, best of 16/64)."""
    found = [ref.cpu_ms_per_req / mine.cpu_ms_per_req for (m, d, c), row in run.rows.items()
             if m == mode and d == 0 and c in (16, 64) and variant in row and "reference" in row
             for mine, ref in [(row[variant], row["reference"])]
             if mine.cpu_ms_per_req and ref.cpu_ms_per_req]
    return max(found) if found else None


# The issue's figures for the minimal Starlette + aiohttp relay on its machine.
ISSUE_REFERENCE = {"json": 7900, "stream": 4600}


def _targets(run: Run) -> list[str]:
    rows: list[tuple[str, str, bool | None]] = []

    def add(name: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        rows.append((name, "—" if value is None else f"{value:,.2f}{unit}", ok))

    for mode, goal in (("json", 4000), ("stream", 2500)):
        best = _best(run, GATEWAY, mode)
        add(f"{mode} req/s (best of 16/64 in flight) ≥ {goal:,}", best,
            None if best is None else best >= goal)
        per_cpu = _best_per_cpu(run, GATEWAY, mode)
        add(f"{mode}: req/s per CPU-second (what a core of its own would give) ≥ {goal:,}",
            per_cpu, None if per_cpu is None else per_cpu >= goal)
        scaled = goal / ISSUE_REFERENCE[mode]
        vs_ref = _best_vs_reference(run, GATEWAY, mode)
        add(f"{mode}: req/s × the reference relay of this run ≥ {scaled:.2f} "
            f"(the target over the issue's relay figure, {goal:,} / {ISSUE_REFERENCE[mode]:,})",
            vs_ref, None if vs_ref is None else vs_ref >= scaled, "×")
        cpu_ref = _cpu_vs_reference(run, GATEWAY, mode)
        add(f"{mode}: the same, per CPU-second (reference CPU ms/req over ours) ≥ {scaled:.2f}",
            cpu_ref, None if cpu_ref is None else cpu_ref >= scaled, "×")
    for mode in ("json", "stream"):
        row = run.rows.get((mode, 0, 1), {})
        if GATEWAY in row and "direct" in row:
            plus = row[GATEWAY].p50_ms - row["direct"].p50_ms
            add(f"{mode}: added p50 (to last byte, wrk) at 1 in flight < 0.5 ms", plus,
                plus < 0.5, " ms")
    p, d = run.probes.get((GATEWAY, "stream")), run.probes.get(("direct", "stream"))
    if p and d:
        plus = p.ttfb_ms - d.ttfb_ms
        add("stream: added p50 to first byte at 1 in flight < 0.5 ms", plus, plus < 0.5, " ms")
    for mode in ("json", "stream"):
        row = run.rows.get((mode, 50, 64), {})
        if GATEWAY in row and "direct" in row and row["direct"].rps:
            ratio = row[GATEWAY].rps / row["direct"].rps
            add(f"{mode}, 50 ms provider, 64 in flight: ≥ 0.95 × direct", ratio, ratio >= 0.95, "×")
    if GATEWAY in run.memory:
        peak = run.memory[GATEWAY][1]
        add("peak RSS, no litellm route used < 100 MB", peak, peak < 100, " MB")
    after = run.memory.get("Claude: after load") or run.memory.get("Claude: after one Claude call")
    if after:
        add("peak RSS after the Claude route was used (once litellm's, native now) < 300 MB",
            after[1], after[1] < 300, " MB")
    for name in (GATEWAY, "embedded + Claude in catalog"):
        if name in run.cold_start:
            add(f"first reply after start < 1.5 s ({name})", run.cold_start[name],
                run.cold_start[name] < 1.5, " s")
    for mode in ("json", "stream"):
        redis, embedded = _best(run, "redis", mode), _best(run, GATEWAY, mode)
        if redis and embedded:
            add(f"Redis {mode} ≥ 0.7 × embedded", redis / embedded, redis / embedded >= 0.7, "×")
        redis, embedded = _best_per_cpu(run, "redis", mode), _best_per_cpu(run, GATEWAY, mode)
        if redis and embedded:
            add(f"Redis {mode} ≥ 0.7 × embedded, per CPU-second", redis / embedded,
                redis / embedded >= 0.7, "×")
    out = ["| target | measured | met |", "|---|---:|---|"]
    for name, value, ok in rows:
        out.append(f"| {name} | {value} | {'—' if ok is None else 'yes' if ok else '**no**'} |")
    return out


def render(run: Run) -> str:
    lines = [f"# Bookbag Gateway benchmark ({'quick' if run.quick else 'full'}, "
             f"{run.seconds:g} s per run, {run.elapsed_s:.0f} s in all)", ""]
    lines += [f"- {k}: {v}" for k, v in run.machine.items()]
    lines += ["", "## Throughput and latency (wrk)", "", *_throughput(run)]
    if dialect_rows := dialect_table(run):
        lines += ["", "## Dialects and the Claude route (issues 14, 15; CPU per request against "
                  "the chat relay of the same gateway)", "", *dialect_rows]
    lines += ["", "## One request at a time: p50 ms to first / last byte (socket probe)", "",
              *_probes(run)]
    lines += ["", "## Processes", "", "| process | first reply after start s | RSS MB | peak RSS MB |",
              "|---|---:|---:|---:|"]
    for name in dict.fromkeys([*run.cold_start, *run.memory]):
        rss, peak = run.memory.get(name, (None, None))
        lines.append(f"| {name} | {_f(run.cold_start.get(name), 3)} | {_f(rss, 1)} "
                     f"| {_f(peak, 1)} |")
    lines += ["", "## Targets (issue 6; the embedded default, metering on)", "", *_targets(run)]
    if run.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in run.notes]]
    return "\n".join(lines)

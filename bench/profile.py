"""Profile the gateway's hot path under load with py-spy, and summarise where the time goes.

    pip install py-spy
    python bench/profile.py --mode json --conns 16 --seconds 10 [--variant embedded] [--svg]
    python bench/profile.py --mode stream --route "claude route"   # a dialect scenario

Starts the fake provider and one gateway exactly as bench/run.py does, drives
it with wrk, and samples the gateway process (`py-spy record --nonblocking`,
so the process is not paused per sample; `--gil` keeps only samples of the
thread holding the GIL, i.e. Python CPU time rather than waits). Writes the collapsed stacks
(`profile-<variant>-<mode>.txt`, flamegraph input) and, with `--svg`, a
flame graph from a second, identical run; prints the functions with the most
inclusive and self samples and the self samples per module.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dialects import ROUTES, dialect_pricing
from bench.load import Target, ensure_wrk, wrk
from bench.stack import LOAD_CORE, body, pricing, start_fake, start_gateway, start_relay

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
VARIANTS = {"embedded": {}, "metering off": {"BOOKBAG_METERING": "off"},
            "redis": {"BOOKBAG_REDIS_URL": "redis://127.0.0.1:6379/15"}}


REPO = str(Path(__file__).resolve().parent.parent) + "/"


def short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", REPO):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def module(path: str) -> str:
    p = short(path)
    if p.startswith("gateway/"):
        return p
    return p.split("/", 1)[0].removesuffix(".py")


def summarise(raw: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part)
            frames.append((m["func"], m["file"]) if m else (part, ""))
        for func, file in set(frames):
            inclusive[f"{func} ({short(file)})"] += count
        func, file = frames[-1]
        self_[f"{func} ({short(file)})"] += count
        modules[module(file)] += count
    if not total:
        return "no samples"

    def table(counter: collections.Counter[str], title: str) -> list[str]:
        rows = [f"\n{title} (of {total} samples)"]
        rows += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return rows

    out = table(inclusive, "inclusive") + table(self_, "self") + table(modules, "self by module")
    return "\n".join(out)


def record(pid: int, seconds: int, out: Path, fmt: str, gil: bool) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
            "--duration", str(seconds), "--format", fmt, "-o", str(out)]
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def drive(target: Target, conns: int, seconds: int, result: dict[str, float]) -> None:
    result["rps"] = wrk(target, conns, seconds).rps


def main() -> None:
    parser = argparse.ArgumentParser(description="py-spy profile of the gateway under wrk load")
    parser.add_argument("--mode", choices=("json", "stream"), default="json")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--variant", choices=[*sorted(VARIANTS), "reference"], default="embedded")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--svg", action="store_true", help="also record a flame graph")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--anthropic", action="store_true",
                        help="request claude-haiku-4-5 on chat (the Claude route) instead of "
                             "gpt-4o-mini")
    parser.add_argument("--route", choices=[r.name for r in ROUTES],
                        help="a dialect scenario of bench/dialects.py (its catalog, path, "
                             "model and body) instead of the chat relay")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL (Python CPU time, not waits)")
    args = parser.parse_args()
    ensure_wrk()
    os.sched_setaffinity(0, {LOAD_CORE})
    args.out.mkdir(parents=True, exist_ok=True)
    route = next((r for r in ROUTES if r.name == args.route), None)
    what = f"{route.name.replace(' ', '-').replace('>', '')}-" if route else \
        "anthropic-" if args.anthropic else ""
    name = f"{args.variant.replace(' ', '-')}-{what}{args.mode}"
    model = route.model if route else "claude-haiku-4-5" if args.anthropic else "gpt-4o-mini"
    with tempfile.TemporaryDirectory(prefix="bookbag-profile-") as tmp:
        workdir = Path(tmp)
        fake, fast, slow = start_fake(workdir)
        proc = None
        try:
            path = workdir / "body.json"
            make_body = route.make_body if route else body
            path.write_bytes(make_body(model, args.mode == "stream"))
            if args.variant == "reference":
                proc, url = start_relay(workdir, fast, slow)
                target = Target(url + "/v1/chat/completions", path)
            else:
                text = dialect_pricing(fast, slow) if route else \
                    pricing(fast, slow, anthropic=args.anthropic)
                gw = start_gateway(args.variant.replace(" ", "-"), workdir, text,
                                   VARIANTS[args.variant])
                proc = gw.proc
                target = Target(gw.url + (route.path if route else "/v1/chat/completions"),
                                path, gw.auth)
            wrk(target, args.conns, 2)
            formats = [("raw", args.out / f"profile-{name}.txt")]
            if args.svg:
                formats.append(("flamegraph", args.out / f"profile-{name}.svg"))
            for fmt, out in formats:
                spy = record(proc.pid, args.seconds, out, fmt, args.gil)
                result: dict[str, float] = {}
                load = threading.Thread(target=drive, args=(target, args.conns,
                                                            args.seconds + 1, result))
                load.start()
                _, err = spy.communicate()
                load.join()
                if spy.returncode != 0:
                    raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
                print(f"{fmt}: {out}  ({result.get('rps', 0):,.0f} req/s while sampled)")
            print(summarise(args.out / f"profile-{name}.txt", args.top))
        finally:
            if proc is not None:
                proc.stop()
            fake.stop()


if __name__ == "__main__":
    main()

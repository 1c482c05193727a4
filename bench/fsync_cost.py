"""What durability costs on this disk: the wall time of one SQLite WAL commit (one small
insert) with `synchronous=FULL` (the gateway's default) and `NORMAL`
(BOOKBAG_SQLITE_SYNCHRONOUS=normal), and of a bare 4 KiB write + fdatasync.

    python bench/fsync_cost.py [DIR] [--count N]   # DIR: where to write (default: $TMPDIR)

Prints p50 / p90 / p99 in ms. The disk is shared with whatever else runs: say the load.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable


def commit_times(path: str, mode: str, count: int) -> list[float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={mode}")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    out = []
    for _ in range(count):
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        db.execute("COMMIT")
        out.append((time.perf_counter() - start) * 1000)
    db.close()
    return out


def fdatasync_times(path: str, count: int) -> list[float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    out = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            out.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bookbag-fsync-") as tmp:
        runs: list[tuple[str, Callable[[], list[float]]]] = [
            ("SQLite commit, synchronous=FULL",
             lambda: commit_times(os.path.join(tmp, "full.db"), "FULL", args.count)),
            ("SQLite commit, synchronous=NORMAL",
             lambda: commit_times(os.path.join(tmp, "normal.db"), "NORMAL", args.count)),
            ("write 4 KiB + fdatasync",
             lambda: fdatasync_times(os.path.join(tmp, "raw"), args.count)),
        ]
        for name, run in runs:
            times = sorted(run())
            p90, p99 = times[int(len(times) * 0.9)], times[int(len(times) * 0.99)]
            print(f"{name}: p50 {statistics.median(times):.3f} ms, p90 {p90:.3f} ms, "
                  f"p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()

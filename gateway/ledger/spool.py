"""The spool: unmetered ledger entries wait here, on local disk, while the database is down.

An append-only file of JSON lines, each appended under an exclusive file lock
and fsynced before `append` returns (it is only used during an outage, so the
fsync per entry costs nothing in normal operation). Entries carry no secret:
a `LedgerEntry` has ids, model, counts and reasons, never a key.

Replay, once the database answers: under a second lock (one replayer across
the processes sharing the file), the file is renamed to `<path>.replaying`
(new appends start a fresh file), its entries are written with `apply_entry`
(ON CONFLICT (request_id) DO NOTHING), and only then is it removed. A crash
anywhere in between leaves `.replaying` to be replayed again, which is
harmless: an entry already written is skipped by its request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine

from gateway.storage.database import apply_entry, transaction
from gateway.storage.periodic import Periodic
from gateway.types import BillingMode, EntryKind, LedgerEntry

log = logging.getLogger("bookbag.spool")

Sink = Callable[[list[LedgerEntry]], None]
_FIELDS = frozenset(f.name for f in dataclasses.fields(LedgerEntry))
_BATCH = 500


def encode(entry: LedgerEntry) -> bytes:
    return orjson.dumps(dataclasses.asdict(entry)) + b"\n"


def decode(line: bytes) -> LedgerEntry:
    raw: dict[str, Any] = orjson.loads(line)
    values = {k: v for k, v in raw.items() if k in _FIELDS}
    values["kind"] = EntryKind(values.get("kind", EntryKind.REPLY))
    mode = values.get("billing_mode")
    values["billing_mode"] = BillingMode(mode) if mode else None
    return LedgerEntry(**values)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (its own descriptor, so threads exclude each other too)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self._append_lock = path.with_name(path.name + ".lock")
        self._replay_lock = path.with_name(path.name + ".replay-lock")
        self.appended = 0
        self.replayed = 0
        self.skipped = 0  # unreadable lines (a write torn by a crash)

    def append(self, entry: LedgerEntry) -> None:
        """Write one entry durably; raises OSError if the disk refuses (the caller counts it)."""
        line = encode(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _flock(self._append_lock):
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a torn last line must not swallow this entry
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path)
        self.appended += 1

    def has_backlog(self) -> bool:
        return self.path.exists() or self.replaying.exists()

    def backlog(self) -> int:
        """Entries waiting to reach the database (lines in both files)."""
        total = 0
        for path in (self.replaying, self.path):
            with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    total += chunk.count(b"\n")
        return total

    def drain(self, sink: Sink) -> int:
        """Write every spooled entry with `sink`, then drop them; returns how many were read.

        Raises what `sink` raises (the database is still down): the entries stay.
        """
        if not self.has_backlog():
            return 0
        with _flock(self._replay_lock, wait=False) as mine:
            if not mine:
                return 0  # another process is replaying this spool
            if not self.replaying.exists():
                with _flock(self._append_lock):
                    if not self.path.exists():
                        return 0
                    os.replace(self.path, self.replaying)
                    _fsync_dir(self.path)
            count = 0
            for batch in self._batches(self.replaying):
                sink(batch)
                count += len(batch)
            self.replaying.unlink()
            _fsync_dir(self.path)
        self.replayed += count
        return count

    def _batches(self, path: Path) -> Iterator[list[LedgerEntry]]:
        """The file's entries, a batch at a time (a long outage can spool a large file)."""
        batch: list[LedgerEntry] = []
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    batch.append(decode(line))
                except (ValueError, TypeError):
                    self.skipped += 1
                    log.error("skipping an unreadable spool line in %s", path)
                    continue
                if len(batch) >= _BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch


def ledger_sink(engine: Engine) -> Sink:
    """Write entries to the ledger, once each by request id, one transaction per batch."""

    def write(entries: list[LedgerEntry]) -> None:
        with transaction(engine) as (cur, sql):
            for entry in entries:
                apply_entry(cur, sql, entry)

    return write


async def replay(spool: Spool, sink: Sink) -> None:
    """Replay the spool if it has entries (the database may be back)."""
    if not spool.has_backlog():
        return
    try:
        count = await asyncio.to_thread(spool.drain, sink)
    except Exception as exc:  # expected while the database is away: one quiet line
        log.info("spool replay deferred, the database is not answering: %s", type(exc).__name__)
        return
    if count:
        log.warning("replayed %d spooled ledger entries", count)


async def keep_replaying(spool: Spool, sink: Sink, interval: float) -> None:
    """Every `interval`, `replay` (until cancelled)."""
    await Periodic("spool-replay", lambda: replay(spool, sink), interval, log=log).run()

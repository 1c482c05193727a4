"""Group commit: every write submitted while the previous commit runs goes into the next one.

One writer thread owns one database connection. Submitters on the event loop
get a future that resolves once their write is durable (committed with
`synchronous=FULL` on SQLite), so a reply can await its charge before its
last byte. There is no batching window: at low load a batch is one write,
under load it is everything that arrived during the previous commit.
If a batch fails, its writes are retried one by one so one bad write cannot
fail the others.

On a SQLite file the writers of every process (`serve --workers N`) take turns
through an exclusive `flock` on `<file>-writer.lock` around each batch: the
kernel hands the turn over the moment a batch commits, where SQLite's own busy
handler would sleep 1 to 100 ms between tries (measured: p99 over a second
with two workers; docs/architecture.md, "Many workers on one SQLite file").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine

from gateway.storage.database import Cursor, Sql, paramstyle

log = logging.getLogger("bookbag.writer")

WriteOp = Callable[[Cursor, Sql], Any]
_STOP = object()


class WriterClosed(RuntimeError):
    pass


class GroupWriter:
    def __init__(self, engine: Engine, *, name: str = "ledger-writer") -> None:
        self._engine = engine
        self._sql = Sql(paramstyle(engine))
        self._sqlite = engine.dialect.name == "sqlite"
        database = engine.url.database if self._sqlite else None
        self._turns = f"{database}-writer.lock" if database and database != ":memory:" else None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self.batches = 0
        self.writes = 0
        # Called on the writer thread after each committed batch: (size, seconds its oldest waited).
        self.on_commit: Callable[[int, float], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue a write; the future resolves with its result once it is committed."""
        if self._closed:
            raise WriterClosed("the ledger writer is shut down")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put((op, fut, loop, time.perf_counter()))
        return fut

    async def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def run_sync(self, op: WriteOp) -> Any:
        """Run one write in its own transaction on the caller's thread (CLI, tests)."""
        return self._commit([op])[0]

    # --- writer thread -------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in items):
                stop = True
                items = [item for item in items if item is not _STOP]
            if items:
                self._flush(items)

    def _flush(self, items: list[Any]) -> None:
        ops = [item[0] for item in items]
        outcomes: list[tuple[bool, Any]]
        try:
            outcomes = [(True, r) for r in self._commit(ops)]
        except Exception as exc:
            outcomes = [(False, exc)] if len(ops) == 1 else [self._one(op) for op in ops]
        self.batches += 1
        self.writes += len(ops)
        if self.on_commit is not None:
            with contextlib.suppress(Exception):
                self.on_commit(len(ops), time.perf_counter() - min(item[3] for item in items))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop, _), (ok, value) in zip(items, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in by_loop.items():
            # A closed loop has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)

    def _one(self, op: WriteOp) -> tuple[bool, Any]:
        try:
            return True, self._commit([op])[0]
        except Exception as exc:
            return False, exc

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn among the writers of one SQLite file (a no-op elsewhere)."""
        if self._turns is None:
            yield
            return
        fd = os.open(self._turns, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _commit(self, ops: list[WriteOp]) -> list[Any]:
        with self._turn():
            return self._commit_now(ops)

    def _commit_now(self, ops: list[WriteOp]) -> list[Any]:
        raw = self._engine.raw_connection()
        try:
            cur: Any = raw.cursor()
            if self._sqlite:
                cur.execute("BEGIN IMMEDIATE")
            results = [op(cur, self._sql) for op in ops]
            raw.commit()
            return results
        except Exception:
            try:
                raw.rollback()
            except Exception:
                log.warning("rollback failed after a failed ledger batch", exc_info=True)
            raise
        finally:
            raw.close()


def _resolve(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in done:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

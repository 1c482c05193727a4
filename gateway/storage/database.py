"""The SQL database: engine, connection settings, schema preparation, and `apply_entry`.

`apply_entry` is the one way a ledger entry is written: it inserts the row
unless its `request_id` exists, and only when it inserted does it move the
`balances` projection. Every writer (settle, grant, renewal, outbox consumer,
spool replay) goes through it, so replaying an entry can never charge twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event, pool
from sqlalchemy.engine.interfaces import DBAPIConnection

from gateway.storage import migrate
from gateway.storage.schema import LEDGER_COLUMNS
from gateway.types import EntryKind, LedgerEntry


class Cursor(Protocol):
    """The part of a DB-API cursor the gateway uses (sqlite3 and psycopg alike)."""

    rowcount: int

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, synchronous: str = "full") -> Engine:
    """An engine for `url`; on SQLite, `synchronous` is the WAL's fsync policy (`full`, the
    default, or `normal`: BOOKBAG_SQLITE_SYNCHRONOUS, gateway/settings.py)."""
    if synchronous not in ("full", "normal"):
        raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
    pragma = f"PRAGMA synchronous={synchronous.upper()}"
    url = normalise_url(url)
    if is_sqlite(url):
        engine = create_engine(
            url,
            poolclass=pool.QueuePool,
            pool_size=4,
            max_overflow=8,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: object) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed charge survives power loss, not only a process crash.
            # NORMAL (an operator's choice): it survives a process crash only.
            cur.execute(pragma)
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # The driver runs in autocommit; take the write lock up front so
            # read-then-write transactions never fail to upgrade their lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A database host that stops answering must not hold a request for the OS's TCP
    # timeout (minutes): connecting fails after a few seconds, and callers degrade.
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True,
                         connect_args={"connect_timeout": 3})


def create_schema(engine: Engine) -> bool:
    """Create an empty database's schema through the migrations; True when it did.

    A database that is not at the migrations' head is refused with
    `gateway.storage.migrate.SchemaOutdated` (run `bookbag-gateway db upgrade`).
    """
    return migrate.prepare(engine)


def paramstyle(engine: Engine) -> str:
    return "qmark" if engine.dialect.name == "sqlite" else "format"


class Sql:
    """Raw SQL text in one style (`?` placeholders) adapted to the driver's."""

    def __init__(self, style: str) -> None:
        self.style = style

    def __call__(self, text: str) -> str:
        return text if self.style == "qmark" else text.replace("?", "%s")


_INSERT_LEDGER = (
    f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in LEDGER_COLUMNS)}) ON CONFLICT (request_id) DO NOTHING"
)
_NEW_PERIOD = (
    "UPDATE balances SET period_start = ?, allotment = ?, allotment_remaining = ?, "
    "topups_remaining = topups_remaining + ? WHERE workspace_id = ? AND period_start < ?"
)
_SAME_PERIOD = (
    "UPDATE balances SET allotment = allotment + ?, allotment_remaining = allotment_remaining + ?, "
    "topups_remaining = topups_remaining + ? WHERE workspace_id = ? AND period_start = ?"
)
_OLD_PERIOD = (
    "UPDATE balances SET topups_remaining = topups_remaining + ? "
    "WHERE workspace_id = ? AND period_start > ?"
)


ROLLUP_BUCKET_MS = 3_600_000  # usage_rollup buckets are UTC hours
_QUARTERS = (15, 30, 45)
_ROLLUP_SUMS = ("credits", "replies", "entries",
                *(f"{m}_{q}" for q in _QUARTERS for m in ("credits", "replies", "entries")))
_ROLLUP = (
    "INSERT INTO usage_rollup (workspace_id, bucket_ms, agent_id, model, billing_mode, "
    f"{', '.join(_ROLLUP_SUMS)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' for _ in _ROLLUP_SUMS)}) "
    "ON CONFLICT (workspace_id, bucket_ms, agent_id, model, billing_mode) DO UPDATE SET "
    + ", ".join(f"{c} = usage_rollup.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
)
_CONVERSATIONS = (
    "INSERT INTO usage_conversations (workspace_id, bucket_ms, conversation_id, agent_id, model, "
    f"billing_mode, {', '.join(_ROLLUP_SUMS)}) "
    f"VALUES (?, ?, ?, ?, ?, ?, {', '.join('?' for _ in _ROLLUP_SUMS)}) "
    "ON CONFLICT (workspace_id, bucket_ms, conversation_id, agent_id, model, billing_mode) DO UPDATE SET "
    + ", ".join(f"{c} = usage_conversations.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
)


def _selected(upsert: str, columns: int) -> str:
    """An upsert taking its row from the `inserted` CTE: nothing when the entry existed."""
    values = ", ".join("?" for _ in range(columns))
    return upsert.replace(f"VALUES ({values})", f"SELECT {values} FROM inserted")


# PostgreSQL, one round trip: the rollups move only when the entry was inserted, and the
# statement's rowcount is 1 exactly when the ledger gained the entry.
_INSERT_REPLY = (
    f"WITH inserted AS ({_INSERT_LEDGER} RETURNING 1), "
    f"hourly AS ({_selected(_ROLLUP, 5 + len(_ROLLUP_SUMS))}) "
    + _selected(_CONVERSATIONS, 6 + len(_ROLLUP_SUMS))
)


def _rollup_params(entry: LedgerEntry) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The parameters of the hourly and the conversation upserts of a reply entry."""
    into_hour = entry.created_ms % ROLLUP_BUCKET_MS
    sums = (entry.credits, entry.replies, 1)
    early = [v if into_hour < q * 60_000 else 0 for q in _QUARTERS for v in sums]
    hour, agent = entry.created_ms - into_hour, entry.agent_id or ""
    model, mode = entry.model or "", str(entry.billing_mode or "")
    return ((entry.workspace_id, hour, agent, model, mode, *sums, *early),
            (entry.workspace_id, hour, entry.conversation_id or "", agent, model, mode, *sums, *early))


def entry_params(entry: LedgerEntry) -> tuple[Any, ...]:
    return tuple(
        str(v) if isinstance(v, EntryKind) or (k == "billing_mode" and v is not None) else v
        for k, v in ((c, getattr(entry, c)) for c in LEDGER_COLUMNS)
    )


def apply_entry(cur: Cursor, sql: Sql, entry: LedgerEntry, *, project: bool = True) -> bool:
    """Insert `entry` once and move the balance projection; False if it already existed.

    `project=False` inserts only: for a meter whose reserve already moved the
    balance (the `sql` meter's holds).

    The allotment delta applies to the period it names: a later period starts
    a new allotment (renewal), an earlier one has lapsed. Reply charges in
    the current period only decrement; grants of kind `allotment` also raise
    the period's allotment.
    """
    reply = entry.kind == EntryKind.REPLY
    # The usage rollups move with a reply entry, in its transaction (`ledger/usage.py`).
    if reply and sql.style == "format":  # PostgreSQL: all in one round trip
        hourly, conversations = _rollup_params(entry)
        cur.execute(sql(_INSERT_REPLY), (*entry_params(entry), *hourly, *conversations))
    else:
        cur.execute(sql(_INSERT_LEDGER), entry_params(entry))
    if cur.rowcount != 1:
        return False
    if reply and sql.style != "format":
        hourly, conversations = _rollup_params(entry)
        cur.execute(sql(_ROLLUP), hourly)
        cur.execute(sql(_CONVERSATIONS), conversations)
    if not project or (not entry.allotment_delta and not entry.topup_delta):
        return True
    period = entry.period_start
    if period is None:
        cur.execute(
            sql("UPDATE balances SET topups_remaining = topups_remaining + ? WHERE workspace_id = ?"),
            (entry.topup_delta, entry.workspace_id),
        )
        return True
    grows_allotment = entry.kind == EntryKind.ALLOTMENT
    if grows_allotment:  # only an allotment grant opens a new period (renewal)
        cur.execute(
            sql(_NEW_PERIOD),
            (period, entry.allotment_delta, entry.allotment_delta, entry.topup_delta,
             entry.workspace_id, period),
        )
        if cur.rowcount:
            return True
    cur.execute(
        sql(_SAME_PERIOD),
        (entry.allotment_delta if grows_allotment else 0, entry.allotment_delta,
         entry.topup_delta, entry.workspace_id, period),
    )
    if cur.rowcount:
        return True
    cur.execute(sql(_OLD_PERIOD), (entry.topup_delta, entry.workspace_id, period))
    return True


@contextmanager
def transaction(engine: Engine) -> Iterator[tuple[Cursor, Sql]]:
    """A raw DB-API cursor in one transaction, committed on success."""
    raw = engine.raw_connection()
    sql = Sql(paramstyle(engine))
    try:
        cur: Any = raw.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        yield cur, sql
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()


@contextmanager
def snapshot(engine: Engine) -> Iterator[tuple[Cursor, Sql]]:
    """A raw cursor for reads only: no write lock on SQLite (a deferred transaction), rolled back."""
    raw = engine.raw_connection()
    sql = Sql(paramstyle(engine))
    try:
        cur: Any = raw.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("BEGIN")
        yield cur, sql
    finally:
        try:
            raw.rollback()
        finally:
            raw.close()

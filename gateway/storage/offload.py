"""Database calls off the event loop, with one translation of their failures.

Every blocking database call an async caller makes (the meters, the read
endpoints, the operator API) goes through `run_db`: the call runs in a worker
thread, and a failure of the database itself (a lost connection, a locked
or full file, a missing table) becomes `ServiceUnavailable`, a 503 the
client may retry. What is not an outage passes through unchanged: a
`GatewayError` the call raised on purpose (402, 404, ...), and the
programming and input errors (`ValueError` and friends; the operator API's
`AccountError`, `InputError`, `KeyringError` are among them) that a caller
translates itself or that must stay a 500 rather than hide behind
"unavailable".
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import GatewayError, ServiceUnavailable

T = TypeVar("T")

# Never an outage: raised on purpose, or a bug in what reached the query (input is checked before).
NOT_OUTAGES: tuple[type[BaseException], ...] = (
    GatewayError, ArithmeticError, LookupError, TypeError, ValueError)

LEDGER = "The ledger database"
BALANCES = "The balance store"


def unavailable(store: str = LEDGER) -> ServiceUnavailable:
    """The 503 for a database that failed (raise it `from` the cause)."""
    return ServiceUnavailable(f"{store} is unavailable; retry shortly.")


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc` is a database failure that did not come through `run_db` (a service that
    offloads its own calls): SQLAlchemy's (pool, connect), a DB-API driver's, the socket's.
    psycopg is asked only once loaded (importing it costs a SQLite gateway startup time)."""
    if isinstance(exc, SQLAlchemyError | sqlite3.Error | OSError):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


async def run_db(fn: Callable[..., T], *args: object, store: str = LEDGER) -> T:
    """`fn(*args)` in a worker thread; a database failure becomes a 503 naming `store`."""
    try:
        return await asyncio.to_thread(fn, *args)
    except NOT_OUTAGES:
        raise
    except Exception as exc:
        raise unavailable(store) from exc

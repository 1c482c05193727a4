"""The SQL idempotency store: the `idempotency` table, written through the group writer.

Every operation is one transaction on the writer's connection (so on the
embedded default it shares commits with the settles around it), keyed by
(workspace_id, key) and conditional on the request id that holds the
record. SQLite serialises them with `BEGIN IMMEDIATE`; on PostgreSQL the
insert's unique key and `SELECT ... FOR UPDATE` do, so any number of
processes can share the table.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine

from gateway.errors import GatewayError, ServiceUnavailable
from gateway.idempotency.store import Record, State, StoredResponse
from gateway.ledger.writer import GroupWriter, WriteOp
from gateway.storage.database import Cursor, Sql, transaction
from gateway.storage.offload import run_db, unavailable

_COLUMNS = "state, body_hash, request_id, lease_ms, expires_ms, kind, status, headers, body"
_WHERE = "workspace_id = ? AND key = ?"


STORE = "The idempotency store"


def _unavailable() -> ServiceUnavailable:
    return unavailable(STORE)


class SqlIdempotencyStore:
    def __init__(self, writer: GroupWriter, *, postgres: bool) -> None:
        self._writer = writer
        self._for_update = " FOR UPDATE" if postgres else ""

    async def _write(self, op: WriteOp) -> Any:
        try:
            return await self._writer.submit(op)
        except GatewayError:
            raise
        except Exception as exc:
            raise _unavailable() from exc

    # --- IdempotencyStore ----------------------------------------------------

    async def claim(self, workspace_id: str, key: str, body_hash: str, request_id: str, *,
                    now_ms: int, lease_ms: int, expires_ms: int) -> Record | None:
        def op(cur: Cursor, sql: Sql) -> Record | None:
            cur.execute(sql(f"SELECT {_COLUMNS} FROM idempotency WHERE {_WHERE}{self._for_update}"),
                        (workspace_id, key))
            row = cur.fetchone()
            if row is not None and row[0] == "in_flight" and row[2] == request_id:
                return None  # our own claim, written by an earlier attempt of this batch
            if row is not None and row[4] > now_ms:
                return _record(row)
            fresh = (body_hash, request_id, now_ms, lease_ms, expires_ms)
            if row is not None:  # expired: start afresh
                cur.execute(sql(
                    "UPDATE idempotency SET state = 'in_flight', body_hash = ?, request_id = ?, "
                    "created_ms = ?, lease_ms = ?, expires_ms = ?, kind = NULL, status = NULL, "
                    f"headers = NULL, body = NULL WHERE {_WHERE} AND expires_ms <= ?"
                ), (*fresh, workspace_id, key, now_ms))
            else:
                cur.execute(sql(
                    "INSERT INTO idempotency (workspace_id, key, state, body_hash, request_id, "
                    "created_ms, lease_ms, expires_ms) VALUES (?, ?, 'in_flight', ?, ?, ?, ?, ?) "
                    "ON CONFLICT (workspace_id, key) DO NOTHING"
                ), (workspace_id, key, *fresh))
            if cur.rowcount == 1:
                return None
            # Another process created or renewed it between our read and write.
            cur.execute(sql(f"SELECT {_COLUMNS} FROM idempotency WHERE {_WHERE}"), (workspace_id, key))
            again = cur.fetchone()
            return _record(again) if again is not None else None

        record: Record | None = await self._write(op)
        return record

    async def take_over(self, workspace_id: str, key: str, old_request_id: str, request_id: str,
                        *, now_ms: int, lease_ms: int, expires_ms: int) -> bool:
        def op(cur: Cursor, sql: Sql) -> bool:
            cur.execute(sql(
                "UPDATE idempotency SET request_id = ?, created_ms = ?, lease_ms = ?, expires_ms = ?, "
                "kind = NULL, status = NULL, headers = NULL, body = NULL "
                f"WHERE {_WHERE} AND request_id = ? AND state = 'in_flight'"
            ), (request_id, now_ms, lease_ms, expires_ms, workspace_id, key, old_request_id))
            return bool(cur.rowcount == 1)

        taken: bool = await self._write(op)
        return taken

    async def stage(self, workspace_id: str, key: str, request_id: str,
                    response: StoredResponse) -> bool:
        params = (response.kind, response.status, orjson.dumps(response.headers).decode(),
                  response.body, workspace_id, key, request_id)

        def op(cur: Cursor, sql: Sql) -> bool:
            cur.execute(sql(
                "UPDATE idempotency SET kind = ?, status = ?, headers = ?, body = ? "
                f"WHERE {_WHERE} AND request_id = ? AND state = 'in_flight'"
            ), params)
            return bool(cur.rowcount == 1)

        staged: bool = await self._write(op)
        return staged

    async def finish(self, workspace_id: str, key: str, request_id: str, *,
                     expires_ms: int) -> bool:
        def op(cur: Cursor, sql: Sql) -> bool:
            cur.execute(sql(
                f"UPDATE idempotency SET state = 'done', expires_ms = ? WHERE {_WHERE} "
                "AND request_id = ?"
            ), (expires_ms, workspace_id, key, request_id))
            return bool(cur.rowcount == 1)

        done: bool = await self._write(op)
        return done

    async def release(self, workspace_id: str, key: str, request_id: str) -> None:
        def op(cur: Cursor, sql: Sql) -> None:
            cur.execute(sql(
                f"DELETE FROM idempotency WHERE {_WHERE} AND request_id = ? AND state = 'in_flight'"
            ), (workspace_id, key, request_id))

        await self._write(op)

    async def sweep(self, now_ms: int) -> int:
        def op(cur: Cursor, sql: Sql) -> int:
            cur.execute(sql("DELETE FROM idempotency WHERE expires_ms <= ?"), (now_ms,))
            return int(cur.rowcount)

        swept: int = await self._write(op)
        return swept

    async def close(self) -> None:
        return None


def _record(row: Any) -> Record:
    state, body_hash, request_id, lease_ms, _expires, kind, status, headers, body = row
    response = None
    if kind is not None and body is not None:
        response = StoredResponse(kind, int(status), dict(orjson.loads(headers or "{}")), bytes(body))
    return Record(State(state), body_hash, request_id, int(lease_ms), response)


class LedgerCheck:
    """`charged(request_id)`: whether the SQL ledger has that entry (for crash recovery)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _lookup(self, request_id: str) -> bool:
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("SELECT 1 FROM ledger WHERE request_id = ?"), (request_id,))
            return cur.fetchone() is not None

    async def __call__(self, request_id: str, workspace_id: str | None = None) -> bool:
        return await run_db(self._lookup, request_id, store=STORE)

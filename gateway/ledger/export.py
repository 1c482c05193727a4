"""Exporting the ledger: keyset pages over (created_ms, seq), streamed in batches as JSON lines or CSV.

A page is every entry after the cursor up to a boundary fixed when the
request starts (the `limit`-th entry, or the last one), so pages never
overlap and entries inserted while a client pages through never shift
what it reads (offsets would). The rows are read in batches of
`BATCH` from short read transactions, so a million-row export never sits
in memory or holds a snapshot open.

An entry is stamped when its request began and written when it settles, so
a reply still streaming can land behind a cursor already handed out;
clients syncing the most recent minutes re-read from a little before their
cursor's time (the hold TTL bounds how late an entry can be).
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import Engine

from gateway.errors import InvalidRequest
from gateway.storage.database import snapshot

BATCH = 2000
MAX_LIMIT = 1_000_000
COLUMNS = (
    "request_id", "created_ms", "kind", "billing_mode", "credits", "allotment_delta",
    "topup_delta", "period_start", "key_id", "agent_id", "conversation_id", "model", "provider",
    "replies", "prompt_tokens", "completion_tokens", "latency_ms", "reason", "ref", "actor",
    "api", "requested_model",
)
FIELDS = ("request_id", "created_at", *COLUMNS[1:])  # what a client sees, in this order
FORMATS = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}
KINDS = ("reply", "allotment", "topup", "adjustment")
Key = tuple[int, int]  # (created_ms, seq)
MAX_KEY = 2**63 - 1  # a BIGINT: a larger cursor part is none this gateway handed out


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(f"v1:{key[0]}:{key[1]}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, created, seq = raw.split(":")
        key = int(created), int(seq)
        if version != "v1" or not all(0 <= part <= MAX_KEY for part in key):
            raise ValueError(version)
        return key
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidRequest("`cursor` is not a cursor this gateway handed out.", param="cursor") from None


@dataclass(frozen=True, slots=True)
class ExportQuery:
    workspace_id: str
    start_ms: int
    end_ms: int
    after: Key | None = None  # exclusive: the cursor
    through: Key | None = None  # inclusive: the page's boundary
    limit: int = 1000
    descending: bool = False
    agent: str | None = None
    model: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    query: ExportQuery  # with its boundary fixed
    next_cursor: str | None  # the boundary: where the next page starts (also when none is there yet)
    has_more: bool


class LedgerExport:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _where(self, q: ExportQuery) -> tuple[str, list[Any]]:
        """The page's rows: in the window, after the cursor, through the boundary (keyset)."""
        lo, hi = q.start_ms, q.end_ms
        past, before = (">", "<") if not q.descending else ("<", ">")
        first, last = (q.after, q.through) if not q.descending else (q.through, q.after)
        # Plain bounds on created_ms narrow the index range; the row values break ties by seq.
        if first is not None:
            lo = max(lo, first[0])
        if last is not None:
            hi = min(hi, last[0] + 1)
        where = "workspace_id = ? AND created_ms >= ? AND created_ms < ?"
        params: list[Any] = [q.workspace_id, lo, hi]
        if q.after is not None:
            where += f" AND (created_ms, seq) {past} (?, ?)"
            params += list(q.after)
        if q.through is not None:
            where += f" AND (created_ms, seq) {before}= (?, ?)"
            params += list(q.through)
        for column, value in (("agent_id", q.agent), ("model", q.model), ("kind", q.kind)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        return where, params

    def _order(self, q: ExportQuery, reverse: bool = False) -> str:
        direction = "DESC" if q.descending != reverse else "ASC"
        return f" ORDER BY created_ms {direction}, seq {direction}"

    def page(self, q: ExportQuery) -> Page:
        """Fix the page's boundary: the `limit`-th entry after the cursor, else the last one."""
        where, params = self._where(q)
        with snapshot(self._engine) as (cur, sql):
            cur.execute(sql(f"SELECT created_ms, seq FROM ledger WHERE {where}{self._order(q)} "
                            "LIMIT 1 OFFSET ?"), (*params, q.limit - 1))
            row = cur.fetchone()
            if row is None:
                cur.execute(sql(f"SELECT created_ms, seq FROM ledger WHERE {where}"
                                f"{self._order(q, reverse=True)} LIMIT 1"), params)
                last = cur.fetchone()
                through = (int(last[0]), int(last[1])) if last else None
                return Page(replace(q, through=through or (0, 0)),
                            encode_cursor(through) if through else None, False)
            through = (int(row[0]), int(row[1]))
            after, after_params = self._where(replace(q, after=through))
            cur.execute(sql(f"SELECT 1 FROM ledger WHERE {after}{self._order(q)} LIMIT 1"),
                        after_params)
            return Page(replace(q, through=through), encode_cursor(through), cur.fetchone() is not None)

    def batch(self, q: ExportQuery) -> list[tuple[Any, ...]]:
        """Up to BATCH rows after `q.after` (through the boundary): COLUMNS + seq."""
        where, params = self._where(q)
        with snapshot(self._engine) as (cur, sql):
            cur.execute(sql(f"SELECT {', '.join(COLUMNS)}, seq FROM ledger WHERE {where}"
                            f"{self._order(q)} LIMIT {BATCH}"), params)
            return list(cur.fetchall())

    def rows(self, page: Page) -> Iterator[list[tuple[Any, ...]]]:
        """The page's rows, batch by batch (synchronous: the CLI; the server runs it in threads)."""
        q = page.query
        if not page.next_cursor:
            return
        while True:
            rows = self.batch(q)
            if rows:
                yield rows
            if len(rows) < BATCH:
                return
            q = replace(q, after=(int(rows[-1][1]), int(rows[-1][-1])))


def created_at(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def as_dicts(rows: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        record = dict(zip(COLUMNS, row, strict=False))
        if record["requested_model"] is None and record["kind"] == "reply":
            record["requested_model"] = record["model"]  # written before fallbacks (0010)
        yield {"request_id": record.pop("request_id"), "created_at": created_at(record["created_ms"]),
               **record}


def jsonl(rows: list[tuple[Any, ...]]) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in as_dicts(rows))


def csv_header() -> bytes:
    return (",".join(FIELDS) + "\r\n").encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(("=", "+", "@", "\t", "\r")):
        return "'" + value  # a spreadsheet would run it as a formula (free-text refs, actors)
    return value


def csv_rows(rows: list[tuple[Any, ...]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for d in as_dicts(rows):
        writer.writerow([_cell(d[f]) for f in FIELDS])
    return out.getvalue().encode()

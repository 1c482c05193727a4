"""GET /v1/ledger and `bookbag-gateway ledger export`: keyset pages, JSON lines and CSV, streamed."""

from __future__ import annotations

import csv
import datetime as dt
import gc
import io
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli.app import app as cli
from gateway.ledger.export import BATCH, FIELDS, ExportQuery, LedgerExport
from gateway.types import EntryKind, LedgerEntry
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway
from tests.postgres import fresh_database
from tests.test_usage import reply, write

DAY = 86_400_000


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def page_through(c: httpx.Client, **params: object) -> tuple[list[str], int]:
    """Every request id of every page, in order, and how many pages it took."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = c.get("/v1/ledger", params=query)
        assert r.status_code == 200, r.text
        pages += 1
        seen += [json.loads(line)["request_id"] for line in r.text.splitlines()]
        if r.headers["x-bookbag-has-more"] != "true":
            return seen, pages
        cursor = r.headers["x-bookbag-next-cursor"]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_gateway(request: pytest.FixtureRequest, make_gateway: GatewayFactory) -> Iterator[RunningGateway]:
    if request.param == "sqlite":
        yield make_gateway()
        return
    with fresh_database() as url:
        gateway = make_gateway(BOOKBAG_DATABASE_URL=url)
        yield gateway
        gateway.stop()  # all the way, before its database is dropped
        gateway.thread.join(60)
        gc.collect()  # connections of the stopped gateway close here, not in a later test


def test_pages_return_every_entry_exactly_once_while_entries_are_added(any_gateway: RunningGateway) -> None:
    gateway = any_gateway
    ws, key = gateway.workspace("free")
    now = int(time.time() * 1000)
    # Many entries share a millisecond: the cursor must break ties by seq.
    before = [reply(ws, now - DAY + (i // 7) * 1000) for i in range(2500)]
    write(gateway.engine, before)
    added: list[str] = []
    stop = threading.Event()

    def add() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            # New replies, and late ones stamped inside the window already paged through.
            batch = [reply(ws, int(time.time() * 1000)) for _ in range(5)] + \
                [reply(ws, now - rng.randint(0, DAY))]
            write(gateway.engine, batch)
            added.extend(e.request_id for e in batch)
            stop.wait(0.005)  # keep inserting throughout, without starving the reader of the lock

    writer = threading.Thread(target=add)
    writer.start()
    try:
        with gateway.client(key) as c:
            # Real replies land in the ledger through the gateway too.
            for _ in range(5):
                assert c.post("/v1/chat/completions", json={
                    "model": "bookbag-local", "messages": [{"role": "user", "content": "hi"}]}
                ).status_code == 200
            seen, pages = page_through(c, limit=150, kind="reply")
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "an entry came back twice"
    assert {e.request_id for e in before} <= set(seen), "an entry present all along was skipped"
    everything = {row["request_id"] for row in gateway.ledger(ws)}
    assert set(seen) <= everything
    assert pages > 2500 // 150 and len(added) > 0


def test_jsonl_and_csv_hold_the_same_entries_in_order(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("hobby")
    now = int(time.time() * 1000)
    write(gateway.engine, [reply(ws, now - i * 1000, agent_id="writer",
                                 conversation_id=f"c{i % 3}", credits=i % 4) for i in range(40)])
    with gateway.client(key) as c:
        lines = c.get("/v1/ledger").text.splitlines()
        table = c.get("/v1/ledger", params={"format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    entries = [json.loads(line) for line in lines]
    assert list(rows[0]) == list(FIELDS) == list(entries[0])
    assert [r["request_id"] for r in rows] == [e["request_id"] for e in entries]
    assert len(entries) == 41  # 40 replies and the workspace's allotment grant
    assert [e["created_ms"] for e in entries] == sorted(e["created_ms"] for e in entries)
    grant = [e for e in entries if e["kind"] == "allotment"]
    assert grant[0]["credits"] == 2000 and grant[0]["created_at"].endswith("Z")
    replies = [r for r in rows if r["kind"] == "reply"]
    assert sum(int(r["credits"]) for r in replies) == sum(i % 4 for i in range(40))


def test_descending_pages_filters_and_bad_parameters(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    now = int(time.time() * 1000)
    entries = [reply(ws, now - i * 1000, model="gpt-4o" if i % 2 else "gpt-4o-mini") for i in range(5)]
    write(gateway.engine, entries)
    with gateway.client(key) as c:
        first = c.get("/v1/ledger", params={"order": "desc", "limit": 2, "kind": "reply"})
        second = c.get("/v1/ledger", params={"order": "desc", "limit": 2, "kind": "reply",
                                             "cursor": first.headers["x-bookbag-next-cursor"]})
        gpt4o = c.get("/v1/ledger", params={"model": "gpt-4o"}).text.splitlines()
        window = c.get("/v1/ledger", params={"start": iso(now - 2500), "end": iso(now + 1),
                                             "kind": "reply"}).text.splitlines()
        errors = [c.get("/v1/ledger", params=p) for p in (
            {"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": "ten"}, {"format": "xml"},
            {"order": "sideways"}, {"kind": "gift"}, {"start": "yesterday"})]
    ids = [json.loads(line)["request_id"] for line in first.text.splitlines()]
    ids += [json.loads(line)["request_id"] for line in second.text.splitlines()]
    assert ids == [e.request_id for e in entries[:4]]  # newest first
    assert first.headers["x-bookbag-has-more"] == "true"
    assert len(gpt4o) == 2
    assert len(window) == 3  # now-2000, now-1000, now
    for r in errors:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request"
    assert errors[0].json()["error"]["param"] == "cursor"


def test_a_large_page_is_read_in_batches(gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    now = int(time.time() * 1000)
    write(gateway.engine, [reply(ws, now - i) for i in range(2 * BATCH + 17)])
    export = LedgerExport(gateway.engine)
    page = export.page(ExportQuery(ws, 0, now + 1, limit=1_000_000))
    sizes = [len(rows) for rows in export.rows(page)]
    assert sizes == [BATCH, BATCH, 18] and not page.has_more  # 17 more and the allotment grant


def test_cli_ledger_export(gateway: RunningGateway, tmp_path: Path) -> None:
    ws, _ = gateway.workspace("free")
    now = int(time.time() * 1000)
    write(gateway.engine, [reply(ws, now - i * 10) for i in range(30)])
    write(gateway.engine, [LedgerEntry(request_id=f"topup:{ws}:{uuid.uuid4().hex}", workspace_id=ws,
                                       kind=EntryKind.TOPUP, billing_mode=None, credits=50,
                                       topup_delta=50, ref="=HYPERLINK(\"http://x\")",
                                       created_ms=now)])
    db = ["--database-url", gateway.settings.database_url]
    runner = CliRunner()
    out = tmp_path / "ledger.jsonl"
    result = runner.invoke(cli, ["ledger", "export", "--workspace", ws, "--output", str(out), *db])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 32
    assert "32 entries" in result.output
    as_csv = runner.invoke(cli, ["ledger", "export", "--workspace", ws, "--format", "csv",
                                 "--kind", "topup", *db])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["kind"], r["credits"]) for r in rows] == [("topup", "50")]
    assert rows[0]["ref"] == "'=HYPERLINK(\"http://x\")"  # not a formula in a spreadsheet

"""Usage analytics: grouping and windows at day and time-zone edges, sums equal to the ledger.

The query reads whole UTC hours from the rollup written by `apply_entry` and
the rest from the ledger, so the property test compares it, on SQLite and
PostgreSQL, with a brute-force sum over the ledger rows in Python.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from typer.testing import CliRunner

from gateway.cli.app import app as cli
from gateway.clock import SystemClock
from gateway.errors import InvalidRequest
from gateway.ledger.usage import CONVERSATION_LIMIT, MAX_LIMIT, Usage, UsageQuery, parse_limit
from gateway.ledger.window import Window, window
from gateway.storage import migrate
from gateway.storage.database import apply_entry as apply
from gateway.storage.database import create_schema, entry_params, make_engine, transaction
from gateway.storage.schema import LEDGER_COLUMNS
from gateway.types import BillingMode, EntryKind, LedgerEntry
from tests.harness import RunningGateway
from tests.postgres import fresh_database

ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Europe/London",
         "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns", "Pacific/Kiritimati"]
H = 3_600_000
# Instants near day and clock-change edges of 2026 (ms, UTC).
ANCHORS = [
    int(dt.datetime(2026, 3, 8, 7, tzinfo=dt.UTC).timestamp() * 1000),    # New York springs forward
    int(dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC).timestamp() * 1000),   # New York falls back
    int(dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC).timestamp() * 1000),   # London springs forward
    int(dt.datetime(2026, 4, 4, 15, tzinfo=dt.UTC).timestamp() * 1000),   # Lord Howe: -30 min
    int(dt.datetime(2026, 5, 1, 18, 30, tzinfo=dt.UTC).timestamp() * 1000),  # Kolkata midnight
]


# --- the query against a brute-force sum, on SQLite and PostgreSQL --------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('usage') / 'usage.db'}"
        eng = make_engine(url)
        create_schema(eng)
        yield eng
        eng.dispose()
        return
    with fresh_database() as url:
        eng = make_engine(url)
        create_schema(eng)
        yield eng
        eng.dispose()


def reply(ws: str, at: int, **kw: Any) -> LedgerEntry:
    fields: dict[str, Any] = {"credits": 1, "replies": 1, "model": "gpt-4o-mini",
                              "billing_mode": BillingMode.METERED, **kw}
    return LedgerEntry(request_id=f"req_{uuid.uuid4().hex}", workspace_id=ws, created_ms=at, **fields)


def write(engine: Engine, entries: list[LedgerEntry]) -> None:
    with transaction(engine) as (cur, sql):
        for entry in entries:
            apply(cur, sql, entry, project=False)


def brute_force(entries: list[LedgerEntry], q: UsageQuery) -> dict[tuple[Any, ...], list[int]]:
    out: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0])
    w = q.window
    for e in entries:
        if e.kind != EntryKind.REPLY or not w.start_ms <= e.created_ms < w.end_ms:
            continue
        if (q.agent is not None and e.agent_id != q.agent) or (q.model is not None and e.model != q.model):
            continue
        values = {"day": dt.datetime.fromtimestamp(e.created_ms / 1000, w.tz).date().isoformat(),
                  "agent": e.agent_id, "model": e.model, "billing_mode": str(e.billing_mode),
                  "conversation": e.conversation_id}
        sums = out[tuple(values[g] for g in q.group_by)]
        sums[0] += e.credits
        sums[1] += e.replies
        sums[2] += 1
    return dict(out)


def as_groups(usage: Usage, q: UsageQuery) -> dict[tuple[Any, ...], list[int]]:
    return {k: [t.credits, t.replies, t.requests] for k, t in usage.query(q).groups.items()
            if t.requests}


def expected_rows(entries: list[LedgerEntry], q: UsageQuery) -> tuple[list[Any], dict[str, int]]:
    """The groups the API returns, in its order, and what `omitted` says: the `limit` groups
    with the most credits (then replies, then keys byte-wise, none first), shown by day."""
    ranked = sorted(brute_force(entries, q).items(), key=lambda kv: (
        -kv[1][0], -kv[1][1], tuple("" if v is None else v for v in kv[0])))
    shown = ranked if q.limit is None else ranked[:q.limit]
    if "day" in q.group_by:
        shown = sorted(shown, key=lambda kv: kv[0][q.group_by.index("day")])  # stable: by rank within
    rest = ranked[len(shown):]
    omitted = {"groups": len(rest), **{m: sum(v[i] for _, v in rest)
                                       for i, m in enumerate(("credits", "replies", "requests"))}}
    return [(k, v) for k, v in shown], omitted


# Offsets from a pivot (the window's ends, each local midnight in it): right on it, a millisecond
# either side, whole and partial hours, or anywhere within two days.
OFFSETS = st.one_of(
    st.sampled_from([0, -1, 1, -H, H, -H // 2, H // 2, -H // 4, H // 4, -H - 1, H - 1]),
    st.integers(-3 * H, 3 * H),
    st.integers(-48, 48).map(lambda k: k * 900_000),
    st.integers(-2 * 86_400_000, 2 * 86_400_000),
)


def entries_near(pivots: list[int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        dict,
        at=st.tuples(st.sampled_from(pivots), OFFSETS).map(sum),
        agent=st.sampled_from([None, "support-bot", "triage"]),
        model=st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5"]),
        mode=st.sampled_from([BillingMode.METERED, BillingMode.LOCAL, BillingMode.BYO]),
        conversation=st.sampled_from([None, "c1", "c2"]),
        credits=st.integers(0, 5),
        replies=st.integers(1, 3),
        kind=st.sampled_from([EntryKind.REPLY] * 6 + [EntryKind.TOPUP]),
    )


@st.composite
def windows(draw: st.DrawFn, zones: list[str] = ZONES) -> Window:
    tz = ZoneInfo(draw(st.sampled_from(zones)))
    anchor = draw(st.sampled_from(ANCHORS))
    if draw(st.booleans()):  # local dates, as the API takes them
        first = dt.datetime.fromtimestamp(anchor / 1000, tz).date() + dt.timedelta(draw(st.integers(-3, 1)))
        last = first + dt.timedelta(draw(st.integers(0, 4)))
        return window(first.isoformat(), last.isoformat(), tz.key, anchor / 1000)
    start = anchor + draw(st.integers(-96, 96)) * 900_000 + draw(st.sampled_from([0, 0, -1, 1, 60_000]))
    length = draw(st.one_of(st.integers(1, 5 * 86_400_000), st.integers(1, 120).map(lambda k: k * 900_000)))
    return Window(start, start + length, tz)


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), w=windows(),
       group_by=st.lists(st.sampled_from(["day", "agent", "model", "billing_mode", "conversation"]),
                         min_size=0, max_size=3, unique=True),
       agent=st.sampled_from([None, None, "triage"]), model=st.sampled_from([None, None, "gpt-4o-mini"]),
       limit=st.sampled_from([None, None, 1, 2, 5]))
def test_usage_equals_a_brute_force_sum_of_the_ledger(
    engine: Engine, data: st.DataObject, w: Window, group_by: list[str], agent: str | None,
    model: str | None, limit: int | None,
) -> None:
    """Every grouping (conversation with any other, any filter) from the rollups and the ledger's
    edges, in the API's order, with `limit` and what it leaves out."""
    ws = "ws_" + uuid.uuid4().hex[:12]
    raw = data.draw(st.lists(entries_near([w.start_ms, w.end_ms, *w.day_starts]), max_size=40))
    entries = [reply(ws, r["at"], agent_id=r["agent"], model=r["model"], billing_mode=r["mode"],
                     conversation_id=r["conversation"], credits=r["credits"], replies=r["replies"],
                     kind=r["kind"]) for r in raw]
    write(engine, entries)
    usage = Usage(engine, SystemClock())
    q = UsageQuery(ws, w, tuple(group_by), agent, model, limit)
    report = usage.query(q)
    shown, omitted = expected_rows(entries, q)
    assert [(tuple(row[g] for g in group_by), [row["credits"], row["replies"], row["requests"]])
            for row in report.rows()] == shown
    body = report.as_json()
    assert body["omitted"] == omitted
    everything = brute_force(entries, UsageQuery(ws, w, (), agent, model)).get((), [0, 0, 0])
    assert [body["total"][m] for m in ("credits", "replies", "requests")] == everything
    # The totals equal the ledger's, whatever the grouping.
    total = usage.query(UsageQuery(ws, w, (), agent, model)).total
    expected = brute_force(entries, UsageQuery(ws, w, (), agent, model)).get((), [0, 0, 0])
    assert [total.credits, total.replies, total.requests] == expected


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), w=windows(["Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham",
                                  "America/St_Johns", "Australia/Lord_Howe"]),
       other=st.sampled_from([None, "agent", "model", "billing_mode", "conversation"]))
def test_days_in_zones_off_the_hour_split_the_hour_at_midnight(
    engine: Engine, data: st.DataObject, w: Window, other: str | None,
) -> None:
    """Every local midnight here cuts a UTC hour of the rollup: it is read from the ledger."""
    ws = "ws_" + uuid.uuid4().hex[:12]
    raw = data.draw(st.lists(entries_near([*w.day_starts, w.start_ms, w.end_ms]), min_size=1, max_size=40))
    entries = [reply(ws, r["at"], agent_id=r["agent"], model=r["model"], credits=r["credits"],
                     conversation_id=r["conversation"]) for r in raw]
    # Always a reply on each midnight and a millisecond before it.
    entries += [reply(ws, cut + d, credits=2, conversation_id="c1") for cut in w.cuts for d in (-1, 0)]
    write(engine, entries)
    q = UsageQuery(ws, w, ("day", other) if other else ("day",))
    assert as_groups(Usage(engine, SystemClock()), q) == brute_force(entries, q)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), w=windows(["America/New_York", "Europe/London", "Australia/Lord_Howe"]),
       other=st.sampled_from([None, "agent"]))
def test_days_across_clock_changes(engine: Engine, data: st.DataObject, w: Window, other: str | None) -> None:
    """Days of 23 and 25 hours (and Lord Howe's 30-minute change) around 2026's transitions."""
    ws = "ws_" + uuid.uuid4().hex[:12]
    raw = data.draw(st.lists(entries_near([*w.day_starts, *ANCHORS]), min_size=1, max_size=40))
    entries = [reply(ws, r["at"], agent_id=r["agent"], credits=r["credits"]) for r in raw]
    entries += [reply(ws, edge + d, credits=2) for edge, _ in w.offsets for d in (-1, 0)]
    entries += [reply(ws, cut + d, credits=3) for cut in w.cuts for d in (-1, 0)]
    write(engine, entries)
    q = UsageQuery(ws, w, ("day", other) if other else ("day",))
    assert as_groups(Usage(engine, SystemClock()), q) == brute_force(entries, q)


def test_a_two_year_window_crosses_every_clock_change(engine: Engine) -> None:
    ws = "ws_" + uuid.uuid4().hex[:12]
    w = window("2025-01-01", "2026-12-31", "America/New_York", 0)
    assert len(w.offsets) == 5  # EST, then four changes
    edges = [start for start, _ in w.offsets[1:]] + list(w.day_starts[::17])
    entries = [reply(ws, edge + delta, credits=1 + i % 5)
               for i, edge in enumerate(edges) for delta in (-H - 1, -1, 0, 1, H, 2 * H + 1)]
    write(engine, entries)
    for group_by in (("day",), ("day", "model"), ()):
        q = UsageQuery(ws, w, group_by)
        assert as_groups(Usage(engine, SystemClock()), q) == brute_force(entries, q)


def test_a_replayed_entry_moves_neither_the_ledger_nor_the_rollup(engine: Engine) -> None:
    ws = "ws_" + uuid.uuid4().hex[:12]
    entry = reply(ws, ANCHORS[0], credits=4)
    with transaction(engine) as (cur, sql):
        assert apply(cur, sql, entry, project=False) is True
        assert apply(cur, sql, entry, project=False) is False  # an outbox or spool replay
    with transaction(engine) as (cur, sql):
        assert apply(cur, sql, entry, project=False) is False
    w = Window(ANCHORS[0] - H, ANCHORS[0] + 2 * H, ZoneInfo("UTC"))
    total = Usage(engine, SystemClock()).query(UsageQuery(ws, w, ("day",))).total
    assert (total.credits, total.requests) == (4, 1)


def test_kolkata_days_begin_at_half_past_six_utc(engine: Engine) -> None:
    ws = "ws_" + uuid.uuid4().hex[:12]
    midnight = int(dt.datetime(2026, 5, 2, tzinfo=ZoneInfo("Asia/Kolkata")).timestamp() * 1000)
    write(engine, [reply(ws, midnight - 1, credits=2), reply(ws, midnight, credits=3),
                   reply(ws, midnight + 5 * H, credits=4)])
    usage = Usage(engine, SystemClock())
    q = UsageQuery(ws, window("2026-05-01", "2026-05-02", "Asia/Kolkata", 0), ("day",))
    rows = usage.query(q).rows()
    assert [(r["day"], r["credits"]) for r in rows] == [("2026-05-01", 2), ("2026-05-02", 7)]
    utc = usage.query(UsageQuery(ws, window("2026-05-01", "2026-05-02", "UTC", 0), ("day",))).rows()
    assert [(r["day"], r["credits"]) for r in utc] == [("2026-05-01", 9)]


@pytest.mark.parametrize("days", [4, 150])
def test_midnights_off_the_quarter_hour_are_read_from_the_ledger(engine: Engine, days: int) -> None:
    """Monrovia was at -0:44:30 until 1972: each of its midnights cuts a UTC hour off the quarter,
    so that hour comes from the ledger; past 100 such hours the whole window does."""
    ws = "ws_" + uuid.uuid4().hex[:12]
    w = window("1971-06-01", (dt.date(1971, 6, 1) + dt.timedelta(days)).isoformat(), "Africa/Monrovia", 0)
    assert all(cut % 900_000 for cut in w.cuts)
    entries = [reply(ws, cut + d, credits=1 + i % 3, conversation_id=f"c{i % 2}",
                     model=("gpt-4o-mini", "gpt-4o")[i % 2])
               for i, cut in enumerate(w.cuts) for d in (-H // 2, -1, 0, 1, H // 2)]
    entries += [reply(ws, w.start_ms + d, credits=2, conversation_id="c1") for d in (0, H // 3, 5 * H)]
    write(engine, entries)
    usage = Usage(engine, SystemClock())
    for group_by in (("day",), ("day", "conversation"), ("conversation", "model"), ()):
        q = UsageQuery(ws, w, group_by)
        assert as_groups(usage, q) == brute_force(entries, q), group_by


def test_limit_keeps_the_most_credits_and_the_default_caps_conversations_only() -> None:
    assert parse_limit(None, ("day", "agent")) is None
    assert parse_limit(None, ("conversation",)) == CONVERSATION_LIMIT == 1000
    assert parse_limit("", ("day", "conversation")) == CONVERSATION_LIMIT
    assert parse_limit("5", ("agent",)) == 5
    assert parse_limit(str(MAX_LIMIT), ("conversation",)) == MAX_LIMIT
    for bad in ("0", "-1", "1.5", "ten", str(MAX_LIMIT + 1), "\u0661"):
        with pytest.raises(InvalidRequest) as err:
            parse_limit(bad, ("conversation",))
        assert err.value.param == "limit"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_builds_the_conversation_rollup_from_the_ledger(
    backend: str, tmp_path: Path,
) -> None:
    """A ledger written before 0007 (conversations without model and billing mode) answers
    conversation groupings with model filters from the rollup 0007 builds."""
    from alembic import command

    with fresh_database() if backend == "postgresql" else _nothing() as pg_url:
        eng = make_engine(pg_url or f"sqlite:///{tmp_path / 'old.db'}")
        try:
            with eng.begin() as conn:
                command.upgrade(migrate._config(conn), "0006")
            ws = "ws_" + uuid.uuid4().hex[:12]
            base = ANCHORS[4]
            entries = [reply(ws, base + i * 700_000, credits=i % 4, replies=1 + i % 2,
                             conversation_id=(None, "c1", "c2")[i % 3], agent_id=(None, "triage")[i % 2],
                             model=("gpt-4o-mini", "gpt-4o", "claude-haiku-4-5")[i % 5 % 3],
                             billing_mode=(BillingMode.METERED, BillingMode.BYO)[i % 7 % 2],
                             kind=EntryKind.TOPUP if i % 11 == 0 else EntryKind.REPLY)
                       for i in range(120)]
            # The ledger as it was at 0006: without the columns later revisions added.
            later = ("api", "response_id", "requested_model")
            old = [i for i, c in enumerate(LEDGER_COLUMNS) if c not in later]
            insert = (f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS[i] for i in old)}) "
                      f"VALUES ({', '.join('?' for _ in old)})")
            with transaction(eng) as (cur, sql):
                for e in entries:
                    params = entry_params(e)
                    cur.execute(sql(insert), tuple(params[i] for i in old))
            migrate.upgrade(eng)
            assert migrate.current(eng) == migrate.head()
            usage = Usage(eng, SystemClock())
            w = window("2026-05-01", "2026-05-03", "Asia/Kolkata", 0)
            for group_by, model in [(("conversation",), "gpt-4o"), (("conversation", "model"), None),
                                    (("day", "conversation", "billing_mode"), None),
                                    (("conversation", "agent"), "claude-haiku-4-5")]:
                q = UsageQuery(ws, w, group_by, model=model)
                assert as_groups(usage, q) == brute_force(entries, q), group_by
            with eng.begin() as conn:  # and back: 0006's rollup, rebuilt from the ledger too
                command.downgrade(migrate._config(conn), "0006")
                rows = conn.exec_driver_sql(
                    f"SELECT COUNT(*), SUM(credits) FROM usage_conversations WHERE workspace_id = '{ws}'"
                ).one()
            replies = [e for e in entries if e.kind == EntryKind.REPLY]
            hours = {(e.created_ms // H, e.conversation_id, e.agent_id) for e in replies}
            assert (rows[0], rows[1]) == (len(hours), sum(e.credits for e in replies))
        finally:
            eng.dispose()


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield None


def test_a_day_of_23_and_of_25_hours_in_new_york(engine: Engine) -> None:
    ny = ZoneInfo("America/New_York")
    ws = "ws_" + uuid.uuid4().hex[:12]
    spring = int(dt.datetime(2026, 3, 8, tzinfo=ny).timestamp() * 1000)
    fall = int(dt.datetime(2026, 11, 1, tzinfo=ny).timestamp() * 1000)
    # One entry per hour for 23 hours from the spring midnight, 25 from the autumn one.
    write(engine, [reply(ws, spring + i * H) for i in range(23)] +
          [reply(ws, fall + i * H) for i in range(25)])
    usage = Usage(engine, SystemClock())
    days = {r["day"]: r["credits"] for r in usage.query(UsageQuery(
        ws, window("2026-03-07", "2026-03-09", ny.key, 0), ("day",))).rows()}
    assert days == {"2026-03-08": 23}
    days = {r["day"]: r["credits"] for r in usage.query(UsageQuery(
        ws, window("2026-10-31", "2026-11-02", ny.key, 0), ("day",))).rows()}
    assert days == {"2026-11-01": 25}


# --- GET /v1/usage and /v1/balance through the running gateway ---------------------------


CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def chat(c: httpx.Client, model: str, agent: str | None = None) -> httpx.Response:
    headers = {"x-bookbag-agent-id": agent} if agent else {}
    r = c.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_usage_by_agent_model_and_mode_matches_the_replies(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        for _ in range(3):
            chat(c, "gpt-4o", "writer")
        chat(c, "gpt-4o-mini", "writer")
        chat(c, "claude-haiku-4-5", "triage")
        chat(c, "bookbag-local", "triage")
        chat(c, "gpt-4o-mini")
        gateway.wait_ledger(ws, 7)
        by_agent = c.get("/v1/usage", params={"group_by": "agent"}).json()
        by_mode = c.get("/v1/usage", params={"group_by": "billing_mode,model"}).json()
        only_writer = c.get("/v1/usage", params={"group_by": "model", "agent": "writer"}).json()
        alias = c.get("/v1/usage", params={"group_by": "model", "model": "GPT-4o mini"}).json()
        balance = c.get("/v1/balance").json()
    assert [(r["agent"], r["credits"], r["replies"]) for r in by_agent["data"]] == \
        [("writer", 16, 4), ("triage", 2, 2), (None, 1, 1)]
    assert by_agent["total"] == {"credits": 19, "replies": 7, "requests": 7}
    assert {(r["billing_mode"], r["model"]): r["credits"] for r in by_mode["data"]} == {
        ("metered", "gpt-4o"): 15, ("metered", "gpt-4o-mini"): 2,
        ("metered", "claude-haiku-4-5"): 2, ("local", "bookbag-local"): 0}
    assert [(r["model"], r["credits"]) for r in only_writer["data"]] == [("gpt-4o", 15), ("gpt-4o-mini", 1)]
    assert alias["model"] == "gpt-4o-mini" and alias["total"]["credits"] == 2
    assert balance["credits_used_30d"] == 19 == sum(r["credits"] for r in gateway.ledger(ws))
    assert by_agent["tz"] == "UTC" and by_agent["start"].endswith("+00:00")


def test_usage_days_in_the_requested_zone(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    kolkata = ZoneInfo("Asia/Kolkata")
    today = dt.datetime.now(kolkata).date()
    midnight = int(dt.datetime(today.year, today.month, today.day, tzinfo=kolkata).timestamp() * 1000)
    write(gateway.engine, [reply(ws, midnight - 1, credits=2), reply(ws, midnight, credits=3)])
    with gateway.client(key) as c:
        local = c.get("/v1/usage", params={"tz": "Asia/Kolkata", "start": str(today - dt.timedelta(1))})
        assert local.status_code == 200, local.text
        utc = c.get("/v1/usage", params={"group_by": "day", "start": str(today - dt.timedelta(2))}).json()
        bad_tz = c.get("/v1/usage", params={"tz": "Mars/Olympus_Mons"})
        bad_group = c.get("/v1/usage", params={"group_by": "day,colour"})
        backwards = c.get("/v1/usage", params={"start": "2026-05-02", "end": "2026-05-01"})
    assert [(r["day"], r["credits"]) for r in local.json()["data"]] == \
        [(str(today - dt.timedelta(1)), 2), (str(today), 3)]
    assert local.json()["start"].endswith("+05:30")
    assert sum(r["credits"] for r in utc["data"]) == 5  # both fall on one UTC day (18:29 and 18:30)
    assert len(utc["data"]) == 1
    for r in (bad_tz, bad_group, backwards):
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert bad_tz.json()["error"]["param"] == "tz"


def test_an_agent_bound_key_reads_only_its_agent_and_read_scope_is_required(
    gateway: RunningGateway,
) -> None:
    ws, key = gateway.workspace("hobby")
    bound = gateway.key(ws, agent_id="triage")
    inference_only = gateway.key(ws, scopes=("inference",))
    with gateway.client(key) as c:
        chat(c, "gpt-4o", "writer")
        chat(c, "claude-haiku-4-5", "triage")
    gateway.wait_ledger(ws, 2)
    with gateway.client(bound) as c:
        mine = c.get("/v1/usage", params={"group_by": "agent"}).json()
        other = c.get("/v1/usage", params={"agent": "writer"})
        ledger = c.get("/v1/ledger").text.splitlines()
    assert [(r["agent"], r["credits"]) for r in mine["data"]] == [("triage", 2)]
    assert mine["agent"] == "triage"
    assert other.status_code == 403 and other.json()["error"]["code"] == "agent_mismatch"
    assert [json.loads(line)["agent_id"] for line in ledger] == ["triage"]  # no grants, no writer
    with gateway.client(inference_only) as c:
        for path in ("/v1/usage", "/v1/ledger", "/v1/balance"):
            r = c.get(path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", path
    with gateway.client() as c:
        assert c.get("/v1/usage").status_code == 401


def test_cli_usage_table_and_json(gateway: RunningGateway, tmp_path: Path) -> None:
    ws, key = gateway.workspace("hobby")
    with gateway.client(key) as c:
        chat(c, "gpt-4o", "writer")
        chat(c, "gpt-4o-mini", "triage")
    gateway.wait_ledger(ws, 2)
    db = ["--database-url", gateway.settings.database_url]
    runner = CliRunner()
    out = runner.invoke(cli, ["usage", "--workspace", ws, "--group-by", "agent", "--json", *db])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [(r["agent"], r["credits"]) for r in data["data"]] == [("writer", 5), ("triage", 1)]
    table = runner.invoke(cli, ["usage", "--workspace", ws, "--group-by", "day,model", *db],
                          env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "gpt-4o-mini" in table.output and "total" in table.output
    assert str(dt.datetime.now(dt.UTC).date()) in table.output
    unknown = runner.invoke(cli, ["usage", "--workspace", "ws_nope", *db])
    assert unknown.exit_code == 2


def test_usage_of_a_window_ending_now_includes_the_latest_reply(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    with gateway.client(key) as c:
        chat(c, "gpt-4o-mini")
        gateway.wait_ledger(ws, 1)
        r = c.get("/v1/usage", params={"start": str(int(time.time()) - 60), "end": str(int(time.time()) + 1),
                                       "group_by": "model"})
    assert r.json()["data"] == [{"model": "gpt-4o-mini", "credits": 1, "replies": 1, "requests": 1}]


def test_usage_limit_returns_the_top_conversations_and_sums_the_rest(gateway: RunningGateway) -> None:
    ws, key = gateway.workspace("free")
    now = int(time.time() * 1000)
    spent = [("a", 5), ("b", 3), ("b", 1), ("c", 2), ("d", 1), (None, 1)]
    write(gateway.engine, [reply(ws, now - 60_000 * (i + 1), credits=credits, conversation_id=conversation)
                           for i, (conversation, credits) in enumerate(spent)])
    with gateway.client(key) as c:
        top = c.get("/v1/usage", params={"group_by": "conversation", "limit": "2"}).json()
        default = c.get("/v1/usage", params={"group_by": "conversation"}).json()
        by_day = c.get("/v1/usage", params={"group_by": "day"}).json()
        bad = c.get("/v1/usage", params={"group_by": "conversation", "limit": "0"})
    assert [(r["conversation"], r["credits"], r["requests"]) for r in top["data"]] == \
        [("a", 5, 1), ("b", 4, 2)]
    assert top["limit"] == 2
    assert top["omitted"] == {"groups": 3, "credits": 4, "replies": 3, "requests": 3}
    assert top["total"] == {"credits": 13, "replies": 6, "requests": 6}
    assert default["limit"] == 1000 and len(default["data"]) == 5
    assert default["omitted"] == {"groups": 0, "credits": 0, "replies": 0, "requests": 0}
    assert by_day["limit"] is None and by_day["omitted"]["groups"] == 0
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"

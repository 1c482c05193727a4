"""Usage queries on a large ledger, on SQLite and PostgreSQL (a benchmark, not a test).

    .venv/bin/python bench/usage_bench.py                      # 1,000,000 entries, both databases
    .venv/bin/python bench/usage_bench.py --backends sqlite --entries 200000
    .venv/bin/python bench/usage_bench.py --mix uniform    # every agent x model x mode: worst case

Builds a ledger of `--entries` replies over `--days` days across
`--workspaces` workspaces, the busiest holding `--busiest`, bulk-loads it
(executemany on SQLite, COPY on PostgreSQL), builds the rollups from it with
the migrations' own statements, then times what the API runs: 30-day usage
for the busiest workspace grouped every way (conversation alone and with
each other grouping and filter), in zones on and off the hour, each figure
the query and its JSON body (what GET /v1/usage does but HTTP; groupings by
conversation at the API's default `limit` of 1,000 unless a line says
otherwise), the balance's 30-day figure, and a ledger export. It also times
`apply_entry` (one entry, its rollup upserts, in batches of 100 per commit)
against a bare ledger insert, and checks the rollups against the raw ledger.
Each figure is the median of `--runs` warm runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from sqlalchemy import Engine

from gateway.clock import SystemClock
from gateway.ledger.export import ExportQuery, LedgerExport
from gateway.ledger.usage import CONVERSATION_LIMIT, Usage, UsageQuery
from gateway.ledger.window import Window, zone
from gateway.storage.database import (
    _INSERT_LEDGER,
    apply_entry,
    create_schema,
    entry_params,
    make_engine,
    snapshot,
    transaction,
)
from gateway.storage.schema import LEDGER_COLUMNS
from gateway.types import BillingMode, LedgerEntry

DAY = 86_400_000
MODELS = [("gpt-4o-mini", 1, "openai"), ("claude-haiku-4-5", 2, "anthropic"),
          ("claude-sonnet-4-6", 4, "anthropic"), ("gpt-4o", 5, "openai")]
MODES = [BillingMode.METERED] * 8 + [BillingMode.LOCAL, BillingMode.BYO]
KEY = ("workspace_id, created_ms - (created_ms % 3600000), COALESCE(agent_id, ''), "
       "COALESCE(model, ''), COALESCE(billing_mode, '')")
QUARTER_SUMS = ", ".join(
    f"SUM(CASE WHEN created_ms % 3600000 < {q * 60_000} THEN {'1' if m == 'entries' else m} ELSE 0 END)"
    for q in (15, 30, 45) for m in ("credits", "replies", "entries"))
SUMS = ("credits, replies, entries, credits_15, replies_15, entries_15, credits_30, replies_30, "
        "entries_30, credits_45, replies_45, entries_45")
CONVERSATION_KEY = ("workspace_id, created_ms - (created_ms % 3600000), COALESCE(conversation_id, ''), "
                    "COALESCE(agent_id, ''), COALESCE(model, ''), COALESCE(billing_mode, '')")
# The statements of migrations 0005 and 0007, which build the rollups from the ledger.
ROLLUPS_FROM_LEDGER = (
    f"INSERT INTO usage_rollup (workspace_id, bucket_ms, agent_id, model, billing_mode, {SUMS}) "
    f"SELECT {KEY}, SUM(credits), SUM(replies), COUNT(*), {QUARTER_SUMS} "
    f"FROM ledger WHERE kind = 'reply' GROUP BY {KEY}",
    "INSERT INTO usage_conversations (workspace_id, bucket_ms, conversation_id, agent_id, model, "
    f"billing_mode, {SUMS}) SELECT {CONVERSATION_KEY}, SUM(credits), SUM(replies), COUNT(*), {QUARTER_SUMS} "
    f"FROM ledger WHERE kind = 'reply' GROUP BY {CONVERSATION_KEY}",
)


def shares(total: int, workspaces: int, busiest: int) -> list[int]:
    """Entries per workspace: the busiest gets `busiest`, the rest a long tail (1/rank)."""
    rest = total - busiest
    weights = [1 / (rank + 1) for rank in range(1, workspaces)]
    scale = rest / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[0] += rest - sum(counts)
    return [busiest, *counts]


def rows(args: argparse.Namespace, now: int) -> Iterator[tuple[Any, ...]]:
    """Replies spread over the days. `realistic`: each agent mostly uses one model, the
    local model is billed `local`, some gpt-4o-mini is BYO, a conversation is one agent's
    replies within 40 minutes; `uniform`: agent, model, billing mode and conversation
    drawn independently (every combination: the rollups' worst case)."""
    rng = random.Random(20261124)
    seq = 0
    for w, count in enumerate(shares(args.entries, args.workspaces, args.busiest)):
        ws = f"ws_bench_{w:03d}"
        agents = [f"agent-{a}" for a in range(12 if w == 0 else 1 + w % 5)] + [None]
        habits = {a: (rng.randrange(4), rng.randrange(4)) for a in agents}
        conversations = max(1, count // 20)
        for _ in range(count):
            seq += 1
            agent = agents[rng.randrange(len(agents))]
            if args.mix == "uniform":
                model, credits, provider = MODELS[rng.randrange(4)]
                mode = MODES[rng.randrange(10)]
            else:
                pick = rng.random()
                if pick < 0.05:
                    model, credits, provider = "bookbag-local", 1, "local"
                else:
                    model, credits, provider = MODELS[habits[agent][0 if pick < 0.75 else 1]]
                mode = (BillingMode.LOCAL if provider == "local" else
                        BillingMode.BYO if model == "gpt-4o-mini" and pick > 0.9 else BillingMode.METERED)
            charged = credits if mode == BillingMode.METERED else 0
            at = now - int(rng.random() * args.days * DAY)
            # realistic: an agent's conversation lasts up to 40 minutes; uniform: anywhere
            conversation = (f"conv-{rng.randrange(conversations)}" if args.mix == "uniform"
                            else f"conv-{agent}-{at // 2_400_000}")
            values = {
                "request_id": f"req_bench_{seq:09d}", "workspace_id": ws, "kind": "reply",
                "billing_mode": str(mode), "credits": charged, "allotment_delta": -charged,
                "topup_delta": 0, "period_start": "2026-01-01", "key_id": "key_bench",
                "agent_id": agent, "conversation_id": conversation,
                "model": model, "provider": provider, "replies": 1, "prompt_tokens": 200,
                "completion_tokens": 90, "latency_ms": 400, "reason": None, "ref": None, "actor": None,
                "created_ms": at,
            }
            yield tuple(values[c] for c in LEDGER_COLUMNS)


def load(engine: Engine, args: argparse.Namespace, now: int) -> float:
    started = time.perf_counter()
    data = rows(args, now)
    if engine.dialect.name == "sqlite":
        insert = _INSERT_LEDGER.replace(" ON CONFLICT (request_id) DO NOTHING", "")
        with transaction(engine) as (cur, _):
            while chunk := [r for _, r in zip(range(50_000), data, strict=False)]:
                cur.executemany(insert, chunk)
            for statement in ROLLUPS_FROM_LEDGER:
                cur.execute(statement)
        with transaction(engine) as (cur, _):
            cur.execute("ANALYZE")
    else:
        raw = engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            with conn.cursor() as cur:
                with cur.copy(f"COPY ledger ({', '.join(LEDGER_COLUMNS)}) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
                for statement in ROLLUPS_FROM_LEDGER:
                    cur.execute(statement)
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE ledger")
            conn.execute("VACUUM ANALYZE usage_rollup")
            conn.execute("VACUUM ANALYZE usage_conversations")
        finally:
            raw.close()
    return time.perf_counter() - started


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def queries(engine: Engine, now: int, runs: int, ws: str) -> list[tuple[str, float, str]]:
    usage = Usage(engine, SystemClock())
    export = LedgerExport(engine)
    out: list[tuple[str, float, str]] = []

    def last_30_days(tz: str) -> Window:
        return Window(now - 30 * DAY, now, zone(tz))

    def respond(q: UsageQuery) -> bytes:
        """What GET /v1/usage does but HTTP: the query, then the JSON body."""
        return orjson.dumps(usage.query(q).as_json())

    every = None  # `limit`: all groups (the API's default caps conversations at 1,000)
    for label, group_by, tz, agent, model, limit in [
        ("day (UTC)", ("day",), "UTC", None, None, None),
        ("day (Asia/Kolkata, +05:30)", ("day",), "Asia/Kolkata", None, None, None),
        ("day,agent (America/New_York)", ("day", "agent"), "America/New_York", None, None, None),
        ("agent", ("agent",), "UTC", None, None, None),
        ("model", ("model",), "UTC", None, None, None),
        ("billing_mode", ("billing_mode",), "UTC", None, None, None),
        ("day, agent+model filter", ("day",), "UTC", "agent-3", "gpt-4o", None),
        ("conversation", ("conversation",), "UTC", None, None, CONVERSATION_LIMIT),
        ("conversation, agent filter", ("conversation",), "UTC", "agent-3", None, CONVERSATION_LIMIT),
        ("conversation, model filter", ("conversation",), "UTC", None, "gpt-4o", CONVERSATION_LIMIT),
        ("conversation, agent+model", ("conversation",), "UTC", "agent-3", "gpt-4o", CONVERSATION_LIMIT),
        ("day,conversation (Kolkata)", ("day", "conversation"), "Asia/Kolkata", None, None,
         CONVERSATION_LIMIT),
        ("conversation,model", ("conversation", "model"), "UTC", None, None, CONVERSATION_LIMIT),
        ("conversation,billing_mode", ("conversation", "billing_mode"), "UTC", None, None,
         CONVERSATION_LIMIT),
        ("conversation,agent,model", ("conversation", "agent", "model"), "UTC", None, None,
         CONVERSATION_LIMIT),
        ("conversation, limit=10", ("conversation",), "UTC", None, None, 10),
        ("conversation, every group", ("conversation",), "UTC", None, None, every),
        ("conversation,model, every group", ("conversation", "model"), "UTC", None, None, every),
    ]:
        q = UsageQuery(ws, last_30_days(tz), group_by, agent, model, limit)
        report = usage.query(q)
        shown = f"{len(report.data)} of {report.group_count}" if report.group_count > len(report.data) \
            else f"{report.group_count}"
        out.append((f"usage 30d {label}", median_ms(lambda q=q: respond(q), runs),
                    f"{shown} groups, {report.total.requests:,} entries"))
    out.append(("balance credits_used_30d", median_ms(
        lambda: usage.credits_since(ws, now - 30 * DAY, now), runs), ""))
    page = ExportQuery(ws, now - 30 * DAY, now, limit=1000)
    out.append(("ledger page (1,000 entries, jsonl rows)", median_ms(
        lambda: [r for rows in export.rows(export.page(page)) for r in rows], runs), ""))
    everything = ExportQuery(ws, now - 30 * DAY, now, limit=1_000_000)
    counted: list[int] = []

    def full() -> None:
        counted.append(sum(len(r) for r in export.rows(export.page(everything))))

    ms = median_ms(full, max(1, runs // 3))
    out.append(("ledger export, whole 30 days", ms, f"{counted[-1]:,} entries, "
                                                    f"{counted[-1] / ms * 1000:,.0f}/s"))
    return out


def check(engine: Engine, now: int, ws: str) -> str:
    usage = Usage(engine, SystemClock())
    for tz, group_by, model in (("UTC", ("day", "agent"), None), ("Asia/Kolkata", ("day", "agent"), None),
                                ("Asia/Kolkata", ("day", "conversation"), "gpt-4o")):
        w = Window(now - 30 * DAY, now, zone(tz))
        got = usage.query(UsageQuery(ws, w, group_by, model=model, limit=10)).total.credits
        with snapshot(engine) as (cur, sql):
            cur.execute(sql("SELECT SUM(credits) FROM ledger WHERE workspace_id = ? AND kind = 'reply' "
                            "AND created_ms >= ? AND created_ms < ? AND model = COALESCE(?, model)"),
                        (ws, w.start_ms, w.end_ms, model))
            want = int(cur.fetchone()[0])
        if got != want:
            raise SystemExit(f"rollup mismatch in {tz} by {group_by}: usage {got} != ledger {want}")
    with snapshot(engine) as (cur, sql):
        cur.execute(sql("SELECT COUNT(*) FROM usage_rollup WHERE workspace_id = ? AND bucket_ms >= ?"),
                    (ws, now - 30 * DAY))
        rollup = int(cur.fetchone()[0])
    with snapshot(engine) as (cur, sql):
        cur.execute(sql("SELECT COUNT(*) FROM usage_conversations WHERE workspace_id = ? AND bucket_ms >= ?"),
                    (ws, now - 30 * DAY))
        conversations = int(cur.fetchone()[0])
    return (f"usage totals equal the raw ledger's (UTC, Asia/Kolkata, conversations by model); "
            f"{rollup:,} hourly and {conversations:,} conversation rollup rows in 30 days")


def settle_cost(engine: Engine, n: int = 5000) -> tuple[float, float]:
    """Microseconds per entry through apply_entry (with the rollup) and a bare ledger insert."""
    now = int(time.time() * 1000)

    def entries() -> list[LedgerEntry]:
        return [LedgerEntry(request_id=f"req_settle_{uuid.uuid4().hex}", workspace_id="ws_bench_000",
                            credits=1, replies=1, model="gpt-4o-mini", agent_id=f"agent-{i % 12}",
                            created_ms=now - i) for i in range(n)]

    def timed(write: Callable[[Any, Any, LedgerEntry], Any]) -> float:
        batch = entries()
        started = time.perf_counter()
        for i in range(0, n, 100):
            with transaction(engine) as (cur, sql):
                for entry in batch[i:i + 100]:
                    write(cur, sql, entry)
        return (time.perf_counter() - started) / n * 1e6

    with_rollup = timed(lambda cur, sql, e: apply_entry(cur, sql, e, project=False))
    bare = timed(lambda cur, sql, e: cur.execute(sql(_INSERT_LEDGER), entry_params(e)))
    return with_rollup, bare


def run(name: str, url: str, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    create_schema(engine)
    now = int(time.time() * 1000)
    print(f"\n== {name}: {args.entries:,} entries over {args.days} days, {args.workspaces} workspaces, "
          f"the busiest {args.busiest:,} ({args.mix} mix)")
    print(f"load + rollup build: {load(engine, args, now):.1f} s")
    print(check(engine, now, "ws_bench_000"))
    for label, ws in (("busiest workspace", "ws_bench_000"), ("a small workspace", "ws_bench_050")):
        print(f"-- {label} ({ws}), median of {args.runs} warm runs")
        for what, ms, note in queries(engine, now, args.runs, ws):
            print(f"   {what:<44} {ms:9.2f} ms   {note}")
    with_rollup, bare = settle_cost(engine)
    print(f"apply_entry per reply (100 per commit): {with_rollup:.0f} us with the rollup upsert, "
          f"{bare:.0f} us for the bare ledger insert")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--workspaces", type=int, default=100)
    parser.add_argument("--busiest", type=int, default=250_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--mix", choices=["realistic", "uniform"], default="realistic")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("BOOKBAG_BENCH_POSTGRES_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory(prefix="bookbag-usage-bench-") as tmp:
            run("SQLite (WAL, synchronous=FULL)", f"sqlite:///{Path(tmp) / 'bench.db'}", args)
    if "postgresql" in backends:
        name = "bookbag_usage_bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            run("PostgreSQL", args.pg_url.rsplit("/", 1)[0] + "/" + name, args)
        finally:
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

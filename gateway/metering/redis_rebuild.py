"""Rebuild a shard's balances from SQL when its epoch changes (DESIGN "Redis Cluster").

A shard's *epoch* is the replication id of the primary serving it. It changes when a
replica is promoted (a failover) and when a Redis restarts; the shard's `rebuilt` key
names the epoch whose data was last rebuilt. The outbox consumer that holds a shard's
lease checks it each time it renews its leases; on a change it rebuilds every workspace
of the shard that is in Redis, then records the new epoch. With no epoch recorded (a new
deployment, this release's first start, a Redis that lost everything) it only records one:
there is nothing stale to rebuild.

What is rebuilt, per workspace (one `REBUILD` script, `redis_scripts.py`):

- the balance (period, allotment, allot_rem, top_rem, reserved): SQL's projection, plus
  the workspace's outbox entries SQL does not have yet (charges, renewals), applied as
  SQL will apply them, minus the holds in Redis (allotment first, as reserve took them);
- a hold whose charge SQL already has is dropped: its settle reached SQL through the old
  primary's outbox but never replicated (without this the sweep would void it and give
  back credits SQL charged);
- cap usage (`cap:<period>:<subject>` fields present): SQL's charges of the subject in
  that period, plus outbox charges SQL lacks, plus the holds naming the subject;
- the grants-seen set (`applied`): SQL's grant and renewal ids plus the outbox's.

Why it is exact: only the lease owner moves the shard's entries to SQL, and it runs the
rebuild between its own steps, so no entry of the shard reaches SQL between the SQL
snapshot and the script; an entry appended after the snapshot is not in SQL and is
applied on top; the script reads the holds, and the outbox entries appended since the
consumer read the stream (once per shard, in pages), atomically with its write. A
grant written to SQL after the snapshot is not in the rebuilt `applied` set, and the script
wipes what a sync (or `grant`) applied of it before the script ran, a sync that counts it
done and will not read it again: so after the script the rebuild reads the workspace's
grants SQL has now and applies those the snapshot lacked (`APPLY`, once per request id:
one the sync applies after the script is not applied twice). Not recovered:
a settle that reached neither the replica nor SQL (its hold, if it replicated, is voided
by the sweep after the hold TTL; docs/guarantees.md bounds it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine

from gateway.accounts.spend_caps import charged
from gateway.metering.redis_keys import Layout, ShardKeys
from gateway.metering.redis_scripts import APPLY, REBUILD, apply_args
from gateway.storage.database import snapshot
from gateway.storage.redis import ERRORS, Redis, is_cluster, transient

log = logging.getLogger("bookbag.meter")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """SQL's side of one workspace's rebuild, read in one snapshot."""

    period: str
    allotment: int
    allotment_remaining: int
    topups_remaining: int
    known: list[str]  # which of the asked request ids SQL has
    applied: list[str]  # the workspace's grant and renewal ids
    caps: list[tuple[str, str, str, int]]  # (bal field, subject, period, SQL's charges)


def load_snapshot(engine: Engine, workspace_id: str, ids: list[str], cap_fields: list[str]
                  ) -> Snapshot | None:
    """(Blocking.) SQL's figures of a workspace for its rebuild; None if SQL has no balance."""
    with snapshot(engine) as (cur, sql):
        if engine.dialect.name == "postgresql":
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute(sql("SELECT period_start, allotment, allotment_remaining, topups_remaining "
                        "FROM balances WHERE workspace_id = ?"), (workspace_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(sql("SELECT request_id FROM ledger WHERE workspace_id = ? AND kind <> 'reply'"),
                    (workspace_id,))
        applied = [str(r[0]) for r in cur.fetchall()]
        known: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i: i + 500]
            cur.execute(sql("SELECT request_id FROM ledger WHERE request_id IN ({})".format(
                ", ".join("?" for _ in chunk))), tuple(chunk))
            known += [str(r[0]) for r in cur.fetchall()]
        caps: list[tuple[str, str, str, int]] = []
        for field in cap_fields:  # cap:<period>:<kind>:<id>
            _, period, subject = field.split(":", 2)
            caps.append((field, subject, period, charged(cur, sql, workspace_id, subject, period)))
    return Snapshot(str(row[0]), int(row[1]), int(row[2]), int(row[3]), known, applied, caps)


def load_late_grants(engine: Engine, workspace_id: str, seen: list[str]
                     ) -> list[tuple[str, str, int, int, str]]:
    """(Blocking.) The workspace's grants and renewals in SQL whose ids are not in `seen`
    (the snapshot's): (request id, kind, allotment delta, top-up delta, period or '')."""
    skip = set(seen)
    with snapshot(engine) as (cur, sql):
        cur.execute(sql("SELECT request_id, kind, allotment_delta, topup_delta, period_start "
                        "FROM ledger WHERE workspace_id = ? AND kind <> 'reply' ORDER BY seq"),
                    (workspace_id,))
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), "" if r[4] is None else str(r[4]))
                for r in cur.fetchall() if str(r[0]) not in skip]


class Rebuilder:
    """Checks shards' epochs and rebuilds the balances of the shards whose epoch changed."""

    def __init__(self, client: Redis, engine: Engine, layout: Layout) -> None:
        self._redis = client
        self._engine = engine
        self.layout = layout
        self._script = client.register_script(REBUILD)
        self._apply = client.register_script(APPLY)
        self.rebuilt = 0  # workspaces rebuilt (tests and logs read it)

    async def checked(self, shard: ShardKeys) -> bool:
        """`check`; False when the shard is down on a Cluster (the others go on)."""
        try:
            await self.check(shard)
        except ERRORS as exc:
            if not is_cluster(self._redis) or not transient(exc):
                raise
            log.warning("%s: epoch check failed (%s)", shard.rebuilt, exc)
            return False
        return True

    async def check(self, shard: ShardKeys) -> bool:
        """Rebuild the shard if its primary is not the one last rebuilt; True if it was."""
        epoch = await self._epoch(shard.rebuilt)
        previous = await self._redis.get(shard.rebuilt)
        if not epoch or previous == epoch:
            return False
        if previous is None:  # no epoch recorded: a new deployment, an upgrade, or a Redis
            await self._redis.set(shard.rebuilt, epoch)  # that lost everything (so nothing
            return False  # in it to rebuild: balances are seeded from SQL as they are asked)
        count = 0
        since, entries = await self._outbox(shard)
        holds = await self._redis.hgetall(shard.holds)
        for workspace_id in await self._workspaces(shard):
            held = [rid for rid, value in holds.items()
                    if str(value).startswith(workspace_id + "|")]
            count += await self.rebuild(workspace_id, shard, since,
                                        entries.get(workspace_id, []), held)
        await self._redis.set(shard.rebuilt, epoch)
        self.rebuilt += count
        log.warning("new epoch %s on %s (a promoted replica or a restarted Redis): rebuilt "
                    "%d balance(s) from SQL", epoch, shard.holds.rsplit(":", 1)[0], count)
        return True

    async def _epoch(self, key: str) -> str:
        """The replication id of the primary serving `key`."""
        if is_cluster(self._redis):
            node = self._redis.get_node_from_key(key)
            info = await self._redis.execute_command("INFO", "replication", target_nodes=node)
        else:
            info = await self._redis.info("replication")
        if isinstance(info, dict) and "master_replid" not in info and len(info) == 1:
            info = next(iter(info.values()))  # per-node answers
        return str(info.get("master_replid", "")) if isinstance(info, dict) else ""

    async def _workspaces(self, shard: ShardKeys) -> list[str]:
        base = shard.holds.rsplit(":", 1)[0]  # <p>:{sNN}
        pattern = f"{base}:ws:*:bal"
        found: list[str] = []
        cursor: int | str = 0
        node = self._redis.get_node_from_key(shard.holds) if is_cluster(self._redis) else None
        while True:
            if node is not None:
                cursors, keys = await self._redis.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=node)
                cursor = next(iter(cursors.values()))  # redis-py's cluster answer: per node
            else:
                cursor, keys = await self._redis.scan(cursor, match=pattern, count=1000)
            found += [str(k)[len(base) + 4: -4] for k in keys]
            if int(cursor) == 0:
                return found

    async def _outbox(self, shard: ShardKeys) -> tuple[str, dict[str, list[tuple[str, str]]]]:
        """The shard's outbox, read once in pages: the last id read, and per workspace its
        entries' (request id, JSON) in order (the script reads only what came after)."""
        since = ""
        out: dict[str, list[tuple[str, str]]] = {}
        while True:
            page = await self._redis.xrange(shard.outbox, min="(" + since if since else "-",
                                            count=1000)
            for id_, fields in page:
                raw = (fields or {}).get("e")
                try:
                    data = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and raw:
                    out.setdefault(str(data.get("workspace_id")), []).append(
                        (str(data.get("request_id")), raw))
                since = str(id_)
            if len(page) < 1000:
                return since, out

    async def rebuild(self, workspace_id: str, shard: ShardKeys, since: str = "",
                      entries: list[tuple[str, str]] | None = None,
                      held: list[str] | None = None) -> int:
        """Rebuild one workspace (1), or 0 when it is not in Redis or SQL. `entries`: its
        outbox entries up to the id `since`; `held`: its holds' request ids."""
        entries = entries or []
        bal, applied = self.layout.bal(workspace_id), self.layout.applied(workspace_id)
        ids = [*(held or []), *(rid for rid, _ in entries)]
        cap_fields = [f for f in await self._redis.hkeys(bal) if str(f).startswith("cap:")]
        snap = await asyncio.to_thread(load_snapshot, self._engine, workspace_id, ids, cap_fields)
        if snap is None:
            return 0
        known = set(snap.known)
        unknown = [raw for rid, raw in entries if rid not in known]  # SQL lacks them
        result = await self._script(
            keys=[bal, applied, shard.holds, shard.exp, shard.outbox],
            args=[workspace_id, snap.period, snap.allotment, snap.allotment_remaining,
                  snap.topups_remaining, len(snap.known), *snap.known, len(snap.applied),
                  *snap.applied, since, len(unknown), *unknown,
                  *(x for c in snap.caps for x in c)])
        if not result:
            return 0
        for request_id, kind, allotment_delta, topup_delta, period in await asyncio.to_thread(
                load_late_grants, self._engine, workspace_id, snap.applied):
            await self._apply(keys=[bal, applied, shard.outbox], args=apply_args(
                request_id, kind, allotment_delta, topup_delta, period))
        if int(result[4]):
            log.warning("%s: %s hold(s) already charged in SQL dropped (their settle was "
                        "lost with the old primary)", workspace_id, result[4])
        return 1

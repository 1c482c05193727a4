"""The Redis meter's key layout, and how a ledger entry is stored in a stream (the Lua
scripts that use them: `redis_scripts.py`).

Key layout (`<p>` is the prefix, `bk` by default; `NN` is the workspace's shard,
crc32(workspace id) mod 16):

    <p>:{sNN}:ws:<workspace>:bal      hash: period, allotment, allot_rem, top_rem, reserved
    <p>:{sNN}:ws:<workspace>:applied  set: request ids of the grants and renewals in `bal`
    <p>:{sNN}:holds                   hash: request id -> "workspace|credits|from_allot|from_top|period"
    <p>:{sNN}:exp                     sorted set: request id scored by its expiry (epoch ms)
    <p>:{sNN}:outbox                  stream: ledger entries on their way to SQL (field `e`, JSON)
    <p>:{sNN}:pending                 hash: request ids of the settled entries not yet in SQL
    <p>:{sNN}:epoch                   a random id set when the shard is first seeded
    <p>:{sNN}:outbox:lease            which consumer writes this shard's outbox to SQL
    <p>:{sNN}:sync:seq                the ledger seq up to which this shard's grants written
                                      straight to SQL are applied (the sync's watermark)
    <p>:{sNN}:rebuilt                 the replication id of the primary whose data was last
                                      rebuilt from SQL (`redis_rebuild.py`)

Why the hash tag is the shard, not the workspace: settle must append the
entry to a stream in the same atomic script that removes the hold, so the
stream has to live in the workspace's slot; one stream per workspace cannot
be read in bulk, and one global stream is a cross-slot script on Redis
Cluster. Sixteen shard tags keep every script single-slot (Cluster-safe),
spread the load over the nodes, and give the consumer 16 streams to read.
The shard count is part of the layout: changing it moves every key.

The `epoch` tells a hold Redis lost (a restart without persistence: a new
epoch) from one already resolved (same epoch): settling a lost hold still
records its charge; settling a resolved one does nothing. On Redis Cluster the
epoch of a hold also names the replication id of the primary that took it: after
a failover the meter sends a changed epoch, so a hold the promoted replica lacks
(it never replicated) is charged, unless its settle did replicate (`pending`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import Any

import orjson

from gateway.types import BillingMode, EntryKind, LedgerEntry

SHARDS = 16


def shard_of(workspace_id: str) -> int:
    return zlib.crc32(workspace_id.encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class ShardKeys:
    holds: str
    exp: str
    outbox: str
    epoch: str
    lease: str
    pending: str
    sync: str
    rebuilt: str


@dataclass(frozen=True, slots=True)
class WorkspaceKeys:
    """The keys of one workspace's scripts, in the order each script takes them."""

    reserve: list[str]  # bal, applied, outbox, holds, exp, epoch
    settle: list[str]  # bal, holds, exp, outbox, epoch, pending
    shard: ShardKeys


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = "bk"

    def shard(self, shard: int) -> ShardKeys:
        base = f"{self.prefix}:{{s{shard:02d}}}"
        return ShardKeys(f"{base}:holds", f"{base}:exp", f"{base}:outbox", f"{base}:epoch",
                         f"{base}:outbox:lease", f"{base}:pending", f"{base}:sync:seq",
                         f"{base}:rebuilt")

    def bal(self, workspace_id: str) -> str:
        return f"{self.prefix}:{{s{shard_of(workspace_id):02d}}}:ws:{workspace_id}:bal"

    def applied(self, workspace_id: str) -> str:
        return f"{self.prefix}:{{s{shard_of(workspace_id):02d}}}:ws:{workspace_id}:applied"

    def of(self, workspace_id: str) -> ShardKeys:
        return self.shard(shard_of(workspace_id))

    def workspace(self, workspace_id: str) -> WorkspaceKeys:
        bal, applied, shard = self.bal(workspace_id), self.applied(workspace_id), \
            self.of(workspace_id)
        return WorkspaceKeys([bal, applied, shard.outbox, shard.holds, shard.exp, shard.epoch],
                             [bal, shard.holds, shard.exp, shard.outbox, shard.epoch,
                              shard.pending], shard)

    @property
    def legacy_sync_mark(self) -> str:
        """The one untagged watermark of gateways before the per-shard ones: read once, as
        the starting point of a shard that has no mark of its own yet (the upgrade)."""
        return f"{self.prefix}:sync:seq"


# --- entries in the outbox ------------------------------------------------------


_FIELDS = tuple(f.name for f in fields(LedgerEntry))


def encode_entry(entry: LedgerEntry) -> bytes:
    return orjson.dumps({k: v for k in _FIELDS if (v := getattr(entry, k)) is not None})


_KINDS = {kind.value: kind for kind in EntryKind}
_MODES = {mode.value: mode for mode in BillingMode}


def decode_entry(raw: str | bytes) -> LedgerEntry:
    """The entry `encode_entry` stored; raises on anything else (an unknown kind or mode)."""
    data: dict[str, Any] = orjson.loads(raw)
    data["kind"] = _KINDS[data.get("kind", EntryKind.REPLY)]
    mode = data.get("billing_mode")
    data["billing_mode"] = _MODES[mode] if mode else None
    return LedgerEntry(**data)

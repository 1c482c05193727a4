"""Workspaces and their API keys: create, list, revoke, look up (the operator side).

Keys are `bk_` + 43 random URL-safe characters, returned once and stored as
SHA-256 hex. These are synchronous SQL operations: the CLI calls them
directly, the server from a worker thread.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from gateway.accounts.key_expiry import ExpiryError, parse_expires_at
from gateway.accounts.operator_input import (
    MAX_ACTOR,
    MAX_CREDITS,
    MAX_REF,
    MAX_WORKSPACE_ID,
    InputError,
    credits,
    string_list,
    text,
    workspace_name,
)
from gateway.accounts.operator_input import AccountError as AccountError  # re-exported
from gateway.accounts.operator_input import UnknownAccount as UnknownAccount  # re-exported
from gateway.accounts.operator_input import anchor_date as check_anchor
from gateway.accounts.spend_caps import CAP_COLUMNS, CapError, caps_of, list_caps, set_cap
from gateway.catalog import Catalog, CatalogError, parse_rate_limit
from gateway.clock import Clock, now_ms
from gateway.metering.base import plan_at, renewal_entry
from gateway.periods import period_of, today
from gateway.storage.database import apply_entry, snapshot, transaction
from gateway.storage.schema import ApiKey, BalanceRow, Workspace
from gateway.types import SCOPES, Caller, EntryKind, LedgerEntry

KEY_PREFIX = "bk_"
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def allotment_of(catalog: Catalog, plan: str, custom: int | None) -> int:
    """A plan's monthly credits; Enterprise (custom) uses the workspace's own figure."""
    credits = catalog.plan(plan).credits
    if credits is None:
        return custom or 0
    return credits


def _check_rate_limit(raw: str | None) -> None:
    if raw is not None:
        try:
            parse_rate_limit("rate_limit", raw)
        except CatalogError:
            raise InputError("rate_limit", f'must look like "100/10s", got {raw[:40]!r}') from None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    key: str  # the only time the plaintext exists
    workspace_id: str
    agent_id: str | None
    scopes: tuple[str, ...]
    expires_ms: int | None = None


class Accounts:
    def __init__(self, engine: Engine, catalog: Catalog, clock: Clock) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock

    def create_workspace(
        self, name: str, plan: str, *, custom_allotment: int | None = None,
        anchor_date: str | None = None, workspace_id: str | None = None,
    ) -> Workspace:
        """A workspace on a plan, holding its plan's allotment at once."""
        name = workspace_name(name)
        if plan not in self._catalog.plans:
            raise InputError("plan", f"must be one of {', '.join(self._catalog.plans)}")
        if self._catalog.plan(plan).credits is None:
            if custom_allotment is None:
                raise InputError("credits", f"is required: plan {plan!r} has a custom allotment")
            credits(custom_allotment, minimum=0, allow_zero=True)
        elif custom_allotment is not None:
            raise InputError("credits", f"is for custom plans; plan {plan!r} has a fixed allotment")
        now = self._clock.now()
        anchor = check_anchor(anchor_date) if anchor_date is not None else today(now)
        period_start, _ = period_of(anchor, now)
        allotment = allotment_of(self._catalog, plan, custom_allotment)
        ws_id = workspace_id or "ws_" + uuid.uuid4().hex[:16]
        if not ID_RE.match(ws_id) or len(ws_id) > MAX_WORKSPACE_ID:
            raise InputError("id", f"must match ^[A-Za-z0-9._-]{{1,{MAX_WORKSPACE_ID}}}$")
        workspace = Workspace(
            id=ws_id, name=name, plan=plan, custom_allotment=custom_allotment,
            anchor_date=anchor, created_ms=now_ms(self._clock),
        )
        with Session(self._engine, expire_on_commit=False) as session:
            if session.get(Workspace, ws_id) is not None:
                raise AccountError(f"workspace {ws_id} already exists")
            session.add(workspace)
            session.flush()  # the balance row references it
            session.add(BalanceRow(workspace_id=ws_id, period_start="0000-00-00", allotment=0,
                                   allotment_remaining=0, topups_remaining=0))
            session.commit()
            session.refresh(workspace)
        with transaction(self._engine) as (cur, sql):
            apply_entry(cur, sql, renewal_entry(ws_id, period_start, allotment, now_ms(self._clock)))
        return workspace

    def workspace(self, workspace_id: str) -> Workspace:
        with Session(self._engine, expire_on_commit=False) as session:
            workspace = session.get(Workspace, workspace_id)
            if workspace is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            return workspace

    def workspaces(self) -> list[Workspace]:
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.exec(select(Workspace).order_by(col(Workspace.created_ms))))

    def create_key(
        self, workspace_id: str, *, agent_id: str | None = None,
        scopes: tuple[str, ...] = ("inference", "read"), rate_limit: str | None = None,
        expires_at: str | int | float | None = None,
    ) -> CreatedKey:
        """A new key; `expires_at` (ISO 8601 or Unix seconds) must be in the future."""
        self.workspace(workspace_id)
        _check_rate_limit(rate_limit)
        try:
            expires_ms = parse_expires_at(expires_at, now_ms(self._clock))
        except ExpiryError as exc:
            raise InputError("expires_at", str(exc)) from None
        scopes = tuple(string_list(list(scopes), "scopes", sorted(SCOPES)))
        if not scopes:
            raise InputError("scopes", f"must name at least one of {', '.join(sorted(SCOPES))}")
        if agent_id is not None and not ID_RE.match(agent_id):
            raise InputError("agent_id", "must match ^[A-Za-z0-9._-]{1,128}$")
        key = new_key()
        row = ApiKey(
            id="key_" + uuid.uuid4().hex[:12], workspace_id=workspace_id, key_hash=hash_key(key),
            prefix=key[:8], agent_id=agent_id, scopes=",".join(sorted(set(scopes))),
            rate_limit=rate_limit, created_ms=now_ms(self._clock), expires_ms=expires_ms,
        )
        with Session(self._engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return CreatedKey(row.id, key, workspace_id, agent_id, tuple(sorted(set(scopes))),
                          expires_ms)

    def update_workspace(
        self, workspace_id: str, *, name: str | None = None, suspended: bool | None = None,
        rate_limit: str | None = None, clear_rate_limit: bool = False,
        responses_store: bool | None = None,
    ) -> Workspace:
        """Rename, suspend or resume, set the workspace-wide rate limit (keys may override),
        or opt in to (or out of) the Responses API's `store` on the house's keys."""
        _check_rate_limit(rate_limit)
        with Session(self._engine, expire_on_commit=False) as session:
            workspace = session.get(Workspace, workspace_id)
            if workspace is None:
                raise UnknownAccount(f"no workspace {workspace_id!r}")
            if name is not None:
                workspace.name = workspace_name(name)
            if suspended is not None:
                workspace.suspended = suspended
            if rate_limit is not None or clear_rate_limit:
                workspace.rate_limit = rate_limit
            if responses_store is not None:
                workspace.responses_store = responses_store
            session.add(workspace)
            session.commit()
            session.refresh(workspace)
            return workspace

    def revoke_key(self, key_id: str) -> ApiKey:
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise UnknownAccount(f"no key {key_id!r}")
            if row.revoked_ms is None:
                row.revoked_ms = now_ms(self._clock)
                session.add(row)
                session.commit()
                session.refresh(row)
            return row

    def keys(self, workspace_id: str) -> list[ApiKey]:
        with Session(self._engine, expire_on_commit=False) as session:
            stmt = select(ApiKey).where(ApiKey.workspace_id == workspace_id)
            return list(session.exec(stmt.order_by(col(ApiKey.created_ms))))

    def caller(self, key_hash: str) -> Caller | None:
        """The live caller for a key hash; None when unknown, revoked or suspended.
        A read only: no write lock on SQLite, where a burst of new keys' lookups would
        otherwise queue behind (and sleep in SQLite's busy handler against) the writers."""
        with snapshot(self._engine) as (cur, sql):
            cur.execute(
                sql(
                    # A pending downgrade is the plan from its period start on (`plan_at`).
                    "SELECT k.id, k.workspace_id, k.agent_id, k.scopes, CASE WHEN "
                    "w.pending_plan IS NOT NULL AND w.pending_from <= ? THEN w.pending_plan "
                    "ELSE w.plan END, w.suspended, COALESCE(k.rate_limit, w.rate_limit), k.expires_ms, "
                    "w.responses_store, "
                    + CAP_COLUMNS +
                    "FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id "
                    "WHERE k.key_hash = ? AND k.revoked_ms IS NULL"
                ),
                (today(self._clock.now()), key_hash),
            )
            row = cur.fetchone()
        if row is None:
            return None
        key_id, ws_id, agent, scopes, plan, suspended, rate_limit, expires_ms, stores, *caps = row
        return Caller(ws_id, key_id, agent, frozenset(scopes.split(",")), plan,
                      suspended=bool(suspended), rate_limit=rate_limit, expires_ms=expires_ms,
                      caps=caps_of(key_id, agent, caps[0], caps[1]),
                      responses_store=bool(stores))

    def set_cap(self, workspace_id: str, kind: str, ident: str, credits: int | None) -> None:
        """Spend controls: set, change or (None) remove a key's or agent's cap per period."""
        self.workspace(workspace_id)
        try:
            set_cap(self._engine, workspace_id, kind, ident, credits)
        except CapError as exc:
            raise AccountError(str(exc)) from None

    def caps(self, workspace_id: str) -> list[dict[str, object]]:
        self.workspace(workspace_id)
        return list_caps(self._engine, workspace_id)

    def topup_entry(
        self, workspace_id: str, amount: int, *, kind: EntryKind = EntryKind.TOPUP,
        ref: str | None = None, actor: str = "operator",
    ) -> LedgerEntry:
        """A top-up (credits > 0) or adjustment (any sign) of the top-up bucket."""
        # an adjustment moves the bucket either way, never by 0
        amount = credits(amount, minimum=1 if kind == EntryKind.TOPUP else -MAX_CREDITS)
        ref = uuid.uuid4().hex if ref is None else text(ref, "ref", MAX_REF)
        text(actor, "actor", MAX_ACTOR)
        self.workspace(workspace_id)
        return LedgerEntry(
            request_id=f"{kind}:{workspace_id}:{ref}", workspace_id=workspace_id, kind=kind,
            billing_mode=None, credits=amount, topup_delta=amount, ref=ref, actor=actor,
            created_ms=now_ms(self._clock),
        )

    def balance(self, workspace_id: str) -> dict[str, object]:
        """The settled balance as SQL holds it, with a renewal that is due applied in view."""
        workspace = self.workspace(workspace_id)
        now = self._clock.now()
        start, end = period_of(workspace.anchor_date, now)
        with transaction(self._engine) as (cur, sql):
            cur.execute(
                sql("SELECT period_start, allotment, allotment_remaining, topups_remaining "
                    "FROM balances WHERE workspace_id = ?"),
                (workspace_id,),
            )
            period, allotment, allot_rem, top_rem = cur.fetchone()
            cur.execute(sql("SELECT COALESCE(SUM(credits), 0) FROM holds WHERE workspace_id = ?"),
                        (workspace_id,))
            reserved = int(cur.fetchone()[0])
        plan, custom = plan_at(workspace.plan, workspace.custom_allotment, workspace.pending_plan,
                               workspace.pending_custom_allotment, workspace.pending_from, start)
        if start > period:  # renewal is lazy: show what the next request will see
            allotment = allot_rem = allotment_of(self._catalog, plan, custom)
        return {
            "workspace_id": workspace_id, "plan": plan, "allotment": allotment,
            "allotment_remaining": allot_rem, "topups_remaining": top_rem,
            "balance": allot_rem + top_rem, "reserved": reserved, "period_start": start,
            "period_end": end,
        }

    def apply(self, entry: LedgerEntry) -> bool:
        """Write a grant directly in SQL (the CLI's path; a running server picks it up)."""
        with transaction(self._engine) as (cur, sql):
            return apply_entry(cur, sql, entry)

"""Workspace BYO keys: provider keys an operator stores for a workspace, and its toggle.

While a workspace's `byo_enabled` is on, replies on BYO-capable models of a
provider it has a key for use that key and are never charged (the pipeline's
decision order: local -> header key -> workspace key -> metering off -> metered).
Keys are encrypted at rest (`keyring.py`); only a fingerprint ever leaves this
module through an API, and the plaintext lives only in a short-TTL cache in
memory on its way to `ProviderCall.api_key`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from gateway.accounts.keyring import Keyring, KeyringError, fingerprint, rotate_column
from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.clock import Clock, now_ms
from gateway.errors import ServiceUnavailable
from gateway.storage.database import snapshot
from gateway.storage.schema import ByoKeyRow, Workspace

log = logging.getLogger("bookbag.byo")

_CACHE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class StoredKey:
    provider: str
    fingerprint: str
    updated_ms: int


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    enabled: bool
    keys: dict[str, str]  # provider -> ciphertext (decrypted on use)


class ByoKeys:
    def __init__(self, engine: Engine, keyring: Keyring, clock: Clock, *,
                 providers: frozenset[str], ttl: float = 2.0) -> None:
        self._engine = engine
        self._keyring = keyring
        self._clock = clock
        self._providers = providers
        self._ttl = ttl
        self._cache: dict[str, _Entry] = {}
        self._plain: dict[str, str] = {}  # ciphertext -> plaintext, so a hit never decrypts
        self._loading: dict[str, asyncio.Future[tuple[bool, dict[str, str]]]] = {}

    # --- operator side (synchronous SQL: the CLI calls these directly) -----

    def _workspace(self, session: Session, workspace_id: str) -> Workspace:
        workspace = session.get(Workspace, workspace_id)
        if workspace is None:
            raise UnknownAccount(f"no workspace {workspace_id!r}")
        return workspace

    def set_key(self, workspace_id: str, provider: str, api_key: str, *,
                actor: str = "operator") -> StoredKey:
        """Store (or replace) the workspace's key for `provider`, encrypted."""
        if provider not in self._providers:
            raise AccountError(
                f"provider must be one of {', '.join(sorted(self._providers))}, got {provider!r}")
        api_key = api_key.strip()
        if not api_key or len(api_key) > 1000 or not api_key.isprintable():
            raise AccountError("the provider key must be 1..1000 printable characters")
        try:
            ciphertext = self._keyring.encrypt(api_key)
        except KeyringError as exc:
            raise AccountError(str(exc)) from None
        stored = StoredKey(provider, fingerprint(api_key), now_ms(self._clock))
        with Session(self._engine) as session:
            self._workspace(session, workspace_id)
            row = session.get(ByoKeyRow, (workspace_id, provider))
            if row is None:
                row = ByoKeyRow(workspace_id=workspace_id, provider=provider, ciphertext="",
                                fingerprint="", updated_ms=0)
            row.ciphertext, row.fingerprint = ciphertext, stored.fingerprint
            row.actor, row.updated_ms = actor, stored.updated_ms
            session.add(row)
            session.commit()
        self.forget(workspace_id)
        return stored

    def delete_key(self, workspace_id: str, provider: str) -> bool:
        with Session(self._engine) as session:
            self._workspace(session, workspace_id)
            row = session.get(ByoKeyRow, (workspace_id, provider))
            if row is None:
                return False
            session.delete(row)
            session.commit()
        self.forget(workspace_id)
        return True

    def keys(self, workspace_id: str) -> list[StoredKey]:
        with Session(self._engine) as session:
            self._workspace(session, workspace_id)
            rows = session.exec(select(ByoKeyRow).where(ByoKeyRow.workspace_id == workspace_id)
                                .order_by(col(ByoKeyRow.provider)))
            return [StoredKey(r.provider, r.fingerprint, r.updated_ms) for r in rows]

    def set_enabled(self, workspace_id: str, enabled: bool) -> None:
        with Session(self._engine) as session:
            workspace = self._workspace(session, workspace_id)
            workspace.byo_enabled = enabled
            session.add(workspace)
            session.commit()
        self.forget(workspace_id)

    def status(self, workspace_id: str) -> dict[str, object]:
        with Session(self._engine) as session:
            enabled = self._workspace(session, workspace_id).byo_enabled
        return {"workspace_id": workspace_id, "enabled": enabled,
                "keys": [{"provider": k.provider, "fingerprint": k.fingerprint,
                          "updated_ms": k.updated_ms} for k in self.keys(workspace_id)]}

    def rotate(self) -> int:
        """Re-encrypt every stored key under the first key of BOOKBAG_SECRET_KEY."""
        rotated = rotate_column(self._engine, self._keyring, ByoKeyRow, "ciphertext")
        self._cache.clear()
        self._plain.clear()
        return rotated

    def forget(self, workspace_id: str) -> None:
        """Drop this process's cached view (the operator changed something)."""
        entry = self._cache.pop(workspace_id, None)
        if entry is not None:
            for ciphertext in entry.keys.values():
                self._plain.pop(ciphertext, None)

    # --- the request path ---------------------------------------------------

    def _load(self, workspace_id: str) -> tuple[bool, dict[str, str]]:
        with snapshot(self._engine) as (cur, sql):  # a read: no write lock on SQLite
            cur.execute(sql("SELECT byo_enabled FROM workspaces WHERE id = ?"), (workspace_id,))
            row = cur.fetchone()
            if row is None or not row[0]:
                return False, {}
            cur.execute(sql("SELECT provider, ciphertext FROM byo_keys WHERE workspace_id = ?"),
                        (workspace_id,))
            return True, {str(p): str(c) for p, c in cur.fetchall()}

    async def _refresh(self, workspace_id: str, stale: _Entry | None) -> _Entry:
        """One load per workspace at a time, however many requests are waiting for it."""
        pending = self._loading.get(workspace_id)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, workspace_id))
            self._loading[workspace_id] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(workspace_id, None))
        try:
            enabled, keys = await asyncio.shield(pending)
        except Exception as exc:
            if stale is None:
                raise ServiceUnavailable(
                    "The workspace settings are unavailable; retry shortly.") from exc
            log.warning("BYO settings of %s unavailable; using the cached ones", workspace_id)
            return stale
        current = self._cache.get(workspace_id)
        if current is not None and current.keys == keys and current.enabled == enabled \
                and current.expires > self._clock.now():
            return current  # another waiter stored this very load
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
            self._plain.clear()
        self.forget(workspace_id)
        entry = _Entry(self._clock.now() + self._ttl, enabled, keys)
        self._cache[workspace_id] = entry
        return entry

    async def lookup(self, workspace_id: str, provider: str) -> str | None:
        """The workspace's key for `provider` while its toggle is on; None otherwise.

        Cached for `ttl` seconds, so a toggle or key change reaches every server
        within that time. A stale entry is used when the database is down.
        """
        entry = self._cache.get(workspace_id)
        if entry is None or entry.expires <= self._clock.now():
            entry = await self._refresh(workspace_id, entry)
        if not entry.enabled:
            return None
        ciphertext = entry.keys.get(provider)
        if ciphertext is None:
            return None
        plain = self._plain.get(ciphertext)
        if plain is None:
            try:
                plain = self._keyring.decrypt(ciphertext)
            except KeyringError as exc:
                log.error("the stored %s key of %s does not decrypt: %s", provider, workspace_id, exc)
                raise ServiceUnavailable(
                    "The workspace's stored provider key cannot be read by this gateway; "
                    "the operator must check BOOKBAG_SECRET_KEY.") from None
            self._plain[ciphertext] = plain
        return plain

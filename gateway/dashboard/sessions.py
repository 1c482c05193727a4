"""Dashboard sessions: a random cookie token, stored as its SHA-256, standing for a key's `read` scope.

Signing in with a workspace key that has the `read` scope creates a session
row (token hash, key id, expiry); the browser holds only the token, in an
HttpOnly, SameSite=Strict cookie. The key itself is never stored, echoed or
logged. A session only ever reads: its caller has the `read` scope alone,
and it dies with its key (revoked) or its workspace (suspended).
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Engine

from gateway.accounts.spend_caps import CAP_COLUMNS, caps_of
from gateway.clock import Clock, now_ms
from gateway.errors import Forbidden, InvalidApiKey
from gateway.storage.database import snapshot, transaction
from gateway.storage.offload import run_db
from gateway.types import Caller

COOKIE = "bookbag_session"
DEFAULT_TTL = 12 * 3600.0
_TOKEN_MAX = 128

STORE = "The session store"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class Sessions:
    def __init__(self, engine: Engine, clock: Clock, ttl: float = DEFAULT_TTL) -> None:
        self._engine = engine
        self._clock = clock
        self.ttl = ttl

    def _create(self, caller: Caller) -> str:
        token = secrets.token_urlsafe(32)
        now = now_ms(self._clock)
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("DELETE FROM dashboard_sessions WHERE expires_ms <= ?"), (now,))
            cur.execute(
                sql("INSERT INTO dashboard_sessions (token_hash, key_id, workspace_id, created_ms, "
                    "expires_ms) VALUES (?, ?, ?, ?, ?)"),
                (_hash(token), caller.key_id, caller.workspace_id, now, now + int(self.ttl * 1000)),
            )
        return token

    def _caller(self, token: str) -> Caller | None:
        with snapshot(self._engine) as (cur, sql):
            cur.execute(
                sql(
                    "SELECT k.id, k.workspace_id, k.agent_id, k.scopes, w.plan, w.suspended, "
                    + CAP_COLUMNS +  # the key's caps, as the inference caller carries them
                    "FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id "
                    "JOIN workspaces w ON w.id = k.workspace_id "
                    "WHERE s.token_hash = ? AND s.expires_ms > ? AND k.revoked_ms IS NULL "
                    "AND (k.expires_ms IS NULL OR k.expires_ms > ?)"  # an expired key's sessions end
                ),
                (_hash(token), now_ms(self._clock), now_ms(self._clock)),
            )
            row = cur.fetchone()
        if row is None:
            return None
        key_id, workspace_id, agent, scopes, plan, suspended, key_cap, agent_cap = row
        if "read" not in scopes.split(","):
            return None
        return Caller(workspace_id, key_id, agent, frozenset({"read"}), plan, suspended=bool(suspended),
                      caps=caps_of(key_id, agent, key_cap, agent_cap))

    def _end(self, token: str) -> None:
        with transaction(self._engine) as (cur, sql):
            cur.execute(sql("DELETE FROM dashboard_sessions WHERE token_hash = ?"), (_hash(token),))

    async def create(self, caller: Caller) -> str:
        """A new session for a caller already authenticated by key; returns the cookie token."""
        return await run_db(self._create, caller, store=STORE)

    async def authenticate(self, token: str) -> Caller:
        if not token or len(token) > _TOKEN_MAX:
            raise InvalidApiKey("Your dashboard session is not valid; sign in again.")
        caller = await run_db(self._caller, token, store=STORE)
        if caller is None:
            raise InvalidApiKey("Your dashboard session expired or its key was revoked; sign in again.")
        if caller.suspended:
            raise Forbidden("This workspace is suspended.", code="workspace_suspended")
        return caller

    async def end(self, token: str) -> None:
        if token and len(token) <= _TOKEN_MAX:
            await run_db(self._end, token, store=STORE)

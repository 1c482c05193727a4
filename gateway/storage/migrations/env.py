"""Alembic's environment: migrations run on the connection `gateway.storage.migrate` passes in.

There is no alembic.ini: `gateway.storage.migrate` builds the configuration and
hands over a connection already inside the transaction (and, on
PostgreSQL, holding the migration lock), so every revision applies on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel.sql.sqltypes import AutoString

from gateway.storage.schema import metadata


def render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """Write SQLModel's string type as a plain `sa.String`, so revisions need no sqlmodel."""
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `bookbag-gateway db upgrade` (gateway.storage.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode lets one revision serve both databases.
    render_as_batch=True,
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()

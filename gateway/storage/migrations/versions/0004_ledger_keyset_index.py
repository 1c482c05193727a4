"""The ledger's (workspace_id, created_ms) index gains seq: keyset pages of the export use it.

SQLite's index already ended in the rowid (seq); PostgreSQL's did not, so a
page had to sort the whole window.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ledger_ws_time", table_name="ledger")
    op.create_index("ix_ledger_ws_time", "ledger", ["workspace_id", "created_ms", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_ws_time", table_name="ledger")
    op.create_index("ix_ledger_ws_time", "ledger", ["workspace_id", "created_ms"], unique=False)

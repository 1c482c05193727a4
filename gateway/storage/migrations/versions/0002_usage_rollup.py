"""Usage analytics: the hourly reply rollup (backfilled from the ledger) and dashboard sessions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000


def upgrade() -> None:
    op.create_table(
        "usage_rollup",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("billing_mode", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("replies", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "bucket_ms", "agent_id", "model", "billing_mode"),
        sqlite_with_rowid=False,
    )
    # Replies recorded before the rollup existed.
    op.execute(
        "INSERT INTO usage_rollup (workspace_id, bucket_ms, agent_id, model, billing_mode, "
        "credits, replies, entries) "
        f"SELECT workspace_id, created_ms - (created_ms % {HOUR_MS}), COALESCE(agent_id, ''), "
        "COALESCE(model, ''), COALESCE(billing_mode, ''), SUM(credits), SUM(replies), COUNT(*) "
        "FROM ledger WHERE kind = 'reply' "
        f"GROUP BY workspace_id, created_ms - (created_ms % {HOUR_MS}), COALESCE(agent_id, ''), "
        "COALESCE(model, ''), COALESCE(billing_mode, '')"
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_dashboard_sessions_expires_ms", "dashboard_sessions", ["expires_ms"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_expires_ms", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_table("usage_rollup")

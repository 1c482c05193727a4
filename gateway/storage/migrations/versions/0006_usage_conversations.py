"""usage_conversations: reply sums per workspace, hour, conversation and agent (built from the ledger).

Grouping usage by conversation reads it instead of every ledger row of the window.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
METRICS = ("credits", "replies", "entries")
QUARTERS = (15, 30, 45)
KEY = (f"workspace_id, created_ms - (created_ms % {HOUR_MS}), COALESCE(conversation_id, ''), "
       "COALESCE(agent_id, '')")


def _early(metric: str, quarter: int) -> str:
    value = "1" if metric == "entries" else metric
    return f"SUM(CASE WHEN created_ms % {HOUR_MS} < {quarter * 60_000} THEN {value} ELSE 0 END)"


def upgrade() -> None:
    sums = [*METRICS, *(f"{m}_{q}" for q in QUARTERS for m in METRICS)]
    op.create_table(
        "usage_conversations",
        *(sa.Column(name, sa.BigInteger(), nullable=False,
                    server_default=None if name in METRICS else "0") for name in sums),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("conversation_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "bucket_ms", "conversation_id", "agent_id"),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO usage_conversations (workspace_id, bucket_ms, conversation_id, agent_id, "
        f"{', '.join(sums)}) SELECT {KEY}, SUM(credits), SUM(replies), COUNT(*), "
        + ", ".join(_early(m, q) for q in QUARTERS for m in METRICS)
        + f" FROM ledger WHERE kind = 'reply' GROUP BY {KEY}"
    )


def downgrade() -> None:
    op.drop_table("usage_conversations")

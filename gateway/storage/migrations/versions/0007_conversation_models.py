"""usage_conversations keyed by model and billing mode too (rebuilt from the ledger).

Grouping by conversation with a `model` filter, or by conversation and model or
billing mode, then reads the rollup instead of every ledger row of the window.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
METRICS = ("credits", "replies", "entries")
QUARTERS = (15, 30, 45)
SUMS = (*METRICS, *(f"{m}_{q}" for q in QUARTERS for m in METRICS))
KEYS = {  # key column -> what the ledger gives it ('' stands for none)
    "workspace_id": "workspace_id",
    "bucket_ms": f"created_ms - (created_ms % {HOUR_MS})",
    "conversation_id": "COALESCE(conversation_id, '')",
    "agent_id": "COALESCE(agent_id, '')",
    "model": "COALESCE(model, '')",
    "billing_mode": "COALESCE(billing_mode, '')",
}
LENGTHS = {"workspace_id": 40, "conversation_id": 128, "agent_id": 128, "model": 128, "billing_mode": 16}


def _early(metric: str, quarter: int) -> str:
    value = "1" if metric == "entries" else metric
    return f"SUM(CASE WHEN created_ms % {HOUR_MS} < {quarter * 60_000} THEN {value} ELSE 0 END)"


def _build(keys: list[str]) -> None:
    """(Re)create usage_conversations with this key and fill it from the ledger's replies."""
    op.drop_table("usage_conversations")
    op.create_table(
        "usage_conversations",
        *(sa.Column(name, sa.BigInteger(), nullable=False,
                    server_default=None if name in METRICS else "0") for name in SUMS),
        *(sa.Column(key, sa.BigInteger(), autoincrement=False, nullable=False) if key == "bucket_ms"
          else sa.Column(key, sa.String(length=LENGTHS[key]), nullable=False) for key in keys),
        sa.PrimaryKeyConstraint(*keys),
        sqlite_with_rowid=False,
    )
    group = ", ".join(KEYS[k] for k in keys)
    op.execute(
        f"INSERT INTO usage_conversations ({', '.join(keys)}, {', '.join(SUMS)}) "
        f"SELECT {group}, SUM(credits), SUM(replies), COUNT(*), "
        + ", ".join(_early(m, q) for q in QUARTERS for m in METRICS)
        + f" FROM ledger WHERE kind = 'reply' GROUP BY {group}"
    )


def upgrade() -> None:
    _build(list(KEYS))


def downgrade() -> None:
    _build(["workspace_id", "bucket_ms", "conversation_id", "agent_id"])

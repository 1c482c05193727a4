"""usage_rollup: sums over each hour's first 15, 30 and 45 minutes (rebuilt from the ledger).

A local midnight in a zone at :15, :30 or :45 from UTC falls inside an hour;
these sums split that hour between its two days without reading the ledger.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
QUARTERS = (15, 30, 45)
METRICS = ("credits", "replies", "entries")
KEY = ("workspace_id, created_ms - (created_ms % 3600000), COALESCE(agent_id, ''), "
       "COALESCE(model, ''), COALESCE(billing_mode, '')")


def _early(metric: str, quarter: int) -> str:
    value = "1" if metric == "entries" else metric
    return f"SUM(CASE WHEN created_ms % {HOUR_MS} < {quarter * 60_000} THEN {value} ELSE 0 END)"


def upgrade() -> None:
    columns = [f"{m}_{q}" for q in QUARTERS for m in METRICS]
    with op.batch_alter_table("usage_rollup") as batch:
        for column in columns:
            batch.add_column(sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
    # Rebuild every row from the ledger, quarters included.
    op.execute("DELETE FROM usage_rollup")
    op.execute(
        "INSERT INTO usage_rollup (workspace_id, bucket_ms, agent_id, model, billing_mode, credits, "
        f"replies, entries, {', '.join(columns)}) SELECT {KEY}, SUM(credits), SUM(replies), COUNT(*), "
        + ", ".join(_early(m, q) for q in QUARTERS for m in METRICS)
        + f" FROM ledger WHERE kind = 'reply' GROUP BY {KEY}"
    )


def downgrade() -> None:
    with op.batch_alter_table("usage_rollup") as batch:
        for column in reversed([f"{m}_{q}" for q in QUARTERS for m in METRICS]):
            batch.drop_column(column)

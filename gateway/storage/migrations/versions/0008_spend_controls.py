"""Spend controls: key expiry (api_keys.expires_ms), caps (spend_caps), the sql meter's
cap usage per period (cap_usage) and the cap subjects a hold counts against (holds.caps),
and alert thresholds (workspaces.alert_thresholds).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("caps", sa.String(length=400), nullable=True))
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("alert_thresholds", sa.String(length=600), nullable=True))
    op.create_table(
        "spend_caps",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=140), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id", "subject"),
    )
    op.create_table(
        "cap_usage",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=140), nullable=False),
        sa.Column("period_start", sa.String(length=10), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "subject", "period_start"),
    )


def downgrade() -> None:
    op.drop_table("cap_usage")
    op.drop_table("spend_caps")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("alert_thresholds")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("caps")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_ms")

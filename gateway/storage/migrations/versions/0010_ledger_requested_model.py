"""The model a reply was asked for (ledger.requested_model): with fallbacks the model that
answered (ledger.model, what the reply is charged at) may differ. Older rows keep NULL,
read as their `model` (they had no fallbacks).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("requested_model", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("requested_model")

"""The dialect of each reply (ledger.api: chat | responses | messages) and the Responses id
the gateway returned (ledger.response_id, indexed: `previous_response_id` is accepted only
for an id the same workspace was given).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("api", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("response_id", sa.String(length=128), nullable=True))
    op.create_index("ix_ledger_response_id", "ledger", ["response_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_response_id", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("response_id")
        batch.drop_column("api")

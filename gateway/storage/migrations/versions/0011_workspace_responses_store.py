"""A workspace's opt-in to the Responses API's `store` on the house's provider keys
(workspaces.responses_store; off for every existing workspace, as before).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite takes NOT NULL with a constant default): a batch would
    # copy the table, and dropping the old `workspaces` fails while keys refer to it.
    op.add_column("workspaces", sa.Column("responses_store", sa.Boolean(), nullable=False,
                                          server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("workspaces", "responses_store")  # SQLite >= 3.35: DROP COLUMN

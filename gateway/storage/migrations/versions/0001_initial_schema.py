"""Initial schema: workspaces, api_keys, balances, holds, ledger, leases.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("custom_allotment", sa.Integer(), nullable=True),
        sa.Column("anchor_date", sa.String(length=10), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("byo_enabled", sa.Boolean(), nullable=False),
        sa.Column("rate_limit", sa.String(length=40), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("scopes", sa.String(length=100), nullable=False),
        sa.Column("rate_limit", sa.String(length=40), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_workspace_id", "api_keys", ["workspace_id"], unique=False)
    op.create_table(
        "balances",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", sa.String(length=10), nullable=False),
        sa.Column("allotment", sa.Integer(), nullable=False),
        sa.Column("allotment_remaining", sa.Integer(), nullable=False),
        sa.Column("topups_remaining", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id"),
    )
    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("from_allotment", sa.Integer(), nullable=False),
        sa.Column("from_topups", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.String(length=10), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_holds_expires_ms", "holds", ["expires_ms"], unique=False)
    op.create_index("ix_holds_workspace_id", "holds", ["workspace_id"], unique=False)
    op.create_table(
        "ledger",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("billing_mode", sa.String(length=16), nullable=True),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("allotment_delta", sa.Integer(), nullable=False),
        sa.Column("topup_delta", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.String(length=10), nullable=True),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("conversation_id", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("provider", sa.String(length=40), nullable=True),
        sa.Column("replies", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("ref", sa.String(length=200), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("request_id", name="uq_ledger_request_id"),
    )
    op.create_index("ix_ledger_ws_time", "ledger", ["workspace_id", "created_ms"], unique=False)
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_ledger_ws_time", table_name="ledger")
    op.drop_table("ledger")
    op.drop_index("ix_holds_workspace_id", table_name="holds")
    op.drop_index("ix_holds_expires_ms", table_name="holds")
    op.drop_table("holds")
    op.drop_table("balances")
    op.drop_index("ix_api_keys_workspace_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("workspaces")

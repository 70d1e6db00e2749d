"""Initial schema: users, nodes, jobs, ledger entries.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("public_key", sa.String(64), primary_key=True),
        sa.Column("balance_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("starter_granted_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("balance_millicredits >= 0", name="ck_users_balance"),
    )
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("node_public_key", sa.String(64), nullable=False),
        sa.Column("owner_public_key", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(300), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("load", JSON, nullable=False),
        sa.Column("hardware", JSON, nullable=False),
        sa.Column("multiplier", sa.Float(), nullable=False),
        sa.Column("proven", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
    )
    op.create_index("ix_nodes_last_seen", "nodes", ["last_seen"])
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column(
            "user_public_key", sa.String(64), sa.ForeignKey("users.public_key"), nullable=False
        ),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("reserved_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("settled_at", TS, nullable=True),
        sa.Column("charged_millicredits", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("reserved_millicredits >= 0", name="ck_jobs_reserved"),
    )
    op.create_index("ix_jobs_status_expires_at", "jobs", ["status", "expires_at"])
    op.create_index("ix_jobs_user_status", "jobs", ["user_public_key", "status"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("account", sa.String(64), sa.ForeignKey("users.public_key"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("balance_after_millicredits", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account", "id"])
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_job_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_account_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_jobs_user_status", table_name="jobs")
    op.drop_index("ix_jobs_status_expires_at", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_nodes_last_seen", table_name="nodes")
    op.drop_table("nodes")
    op.drop_table("users")

"""Trust: invites, usage disputes and node reputation.

- `invites`: one-time admission codes (`troop admin invite`), kept as SHA-256
  hashes; a code is spent by the join that uses it.
- `jobs` gains both sides' claims: the node's (from its signed receipt) and
  the client's countersignature (ReportUsage).
- `disputes`: a node that claimed clearly more than its client received, at
  most one row per job; `nodes.reputation` drops with each.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
JOB_CLAIMS = (
    ("node_completion_tokens", sa.BigInteger()),
    ("node_duration_ms", sa.BigInteger()),
    ("client_completion_tokens", sa.BigInteger()),
    ("client_stream_ms", sa.BigInteger()),
    ("usage_reported_at", TS),
)


def upgrade() -> None:
    op.create_table(
        "invites",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("used_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "disputes",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("node_completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("client_completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("node_duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("client_stream_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_disputes_node_id", "disputes", ["node_id"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("reputation", sa.Float(), nullable=False, server_default=sa.text("1.0"))
        )
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in JOB_CLAIMS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, _ in reversed(JOB_CLAIMS):
            batch.drop_column(name)
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("reputation")
    op.drop_index("ix_disputes_node_id", table_name="disputes")
    op.drop_table("disputes")
    op.drop_table("invites")

"""Priced jobs: bounds and prices fixed at Authorize, two-sided settlement, user disputes.

- `jobs` gains the ticket's bounds (`max_prompt_tokens`, `max_tokens`), the
  model's price when authorized, the node's prompt count and the deadline by
  which a receipt settles without the client's countersignature.
- `disputes` names the user too: a disagreement is recorded on both parties.
- `nodes.slow_jobs` counts countersigned jobs in a row far below the node's proven
  speed; enough of them withdraw the proof.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_COLUMNS = (
    ("max_prompt_tokens", sa.BigInteger()),
    ("max_tokens", sa.BigInteger()),
    ("prompt_price_per_1k", sa.BigInteger()),
    ("completion_price_per_1k", sa.BigInteger()),
    ("node_prompt_tokens", sa.BigInteger()),
    ("countersign_deadline", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in JOB_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index(
        "ix_jobs_status_countersign_deadline", "jobs", ["status", "countersign_deadline"]
    )
    with op.batch_alter_table("disputes") as batch:
        batch.add_column(sa.Column("user_public_key", sa.String(64), nullable=True))
    op.create_index("ix_disputes_user_public_key", "disputes", ["user_public_key"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("slow_jobs", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("slow_jobs")
    op.drop_index("ix_disputes_user_public_key", table_name="disputes")
    with op.batch_alter_table("disputes") as batch:
        batch.drop_column("user_public_key")
    op.drop_index("ix_jobs_status_countersign_deadline", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name, _ in reversed(JOB_COLUMNS):
            batch.drop_column(name)

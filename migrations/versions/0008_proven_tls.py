"""Proven TLS: an endpoint is proven in the mode the node declared (ADR 39).

- `nodes.proven_tls`: whether `proven_endpoint` was dialled with TLS. A node is listed
  only while it advertises that endpoint in that mode; clients are told the mode
  (AuthorizeResponse.tls, NodeInfo.tls). Existing rows: false (their endpoints will be
  proven again if their nodes declare TLS).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("proven_tls", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("proven_tls")

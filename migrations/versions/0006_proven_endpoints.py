"""Proven endpoints: a node is listed only once its advertised endpoint answered with its key.

- `nodes.proven_endpoint`: the endpoint the coordinator last dialled and found
  answering with the node's key (InferenceService.ProveEndpoint); NULL until then.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("proven_endpoint", sa.String(300), nullable=True))
    op.create_index("ix_nodes_node_public_key", "nodes", ["node_public_key"])
    op.create_index("ix_nodes_proven_endpoint", "nodes", ["proven_endpoint"])


def downgrade() -> None:
    op.drop_index("ix_nodes_proven_endpoint", table_name="nodes")
    op.drop_index("ix_nodes_node_public_key", table_name="nodes")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("proven_endpoint")

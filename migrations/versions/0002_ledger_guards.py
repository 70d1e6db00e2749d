"""Ledger guards: append-only ledger_entries, one settling entry of each kind per job.

- `uq_ledger_entries_job_kind` (job_id, kind) unique: a job has at most one
  RESERVE, one EARN and one RELEASE or REFUND, so even a bug that claimed a job
  twice could not write a second payout. It replaces the plain job_id index
  (job_id leads it, so lookups by job still use it).
- Triggers refuse UPDATE and DELETE on ledger_entries (and TRUNCATE on
  PostgreSQL): entries are append-only in the database, not only by habit.

Revision ID: 0002_ledger_guards
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_ledger_guards"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_FUNCTION = """
CREATE FUNCTION troop_ledger_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.drop_index("ix_ledger_entries_job_id", table_name="ledger_entries")
    op.create_index(
        "uq_ledger_entries_job_kind", "ledger_entries", ["job_id", "kind"], unique=True
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries"
            " FOR EACH ROW EXECUTE FUNCTION troop_ledger_entries_append_only()"
        )
        op.execute(
            "CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries"
            " FOR EACH STATEMENT EXECUTE FUNCTION troop_ledger_entries_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{operation.lower()} BEFORE {operation}"
                " ON ledger_entries BEGIN"
                f" SELECT RAISE(ABORT, 'ledger_entries is append-only: {operation} refused');"
                " END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_truncate ON ledger_entries")
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION IF EXISTS troop_ledger_entries_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_delete")
    op.drop_index("uq_ledger_entries_job_kind", table_name="ledger_entries")
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])

"""Verdicts acted on (docs/adr/0053): the verification record on nodes, the verdicts kept,
earnings held while a failed check lasts, and the evidence digest a receipt vouched for.

- `nodes`: checks_passed, checks_failed, last_checked, held_until, failed_models, barred.
- `jobs.evidence_sha256`: the hex digest of the output evidence the node's receipt names.
- `verdicts` (one per job) and `held_earnings` (one per job whose pay is held).
- PostgreSQL: `troop_ledger_close` (replaced) holds the owner's pay in `held_earnings`
  instead of crediting it while the node's hold lasts or its key is barred, as
  `Settling._close` does; `troop_ledger_record_receipt` gains a new overload taking the
  evidence digest (0007's stays for a replica of the previous release during a rolling
  upgrade: its receipts record no digest, and a verdict on such a job is not compared).

SQLite keeps the Python flows. Downgrading puts 0007's `troop_ledger_close` back, drops
the new overload, the tables and the columns (held pay not yet released is lost with
the table: release or refund it first, `troop admin audit-ledger` counts it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)

RECORD_RECEIPT = (
    "troop_ledger_record_receipt(text, text, boolean, bigint, bigint, bigint, timestamptz,"
    " timestamptz, text, troop_ledger_rules)"
)

_FUNCTIONS = (
    # Settling._close: the claim (open -> status), then the owner's pay (or, while the
    # node's hold lasts or its key is barred, a held_earnings row instead) and the user's
    # rest, credited in public-key order (code points, as Python sorts) against deadlocks.
    """
CREATE OR REPLACE FUNCTION troop_ledger_close(
    p_job jobs, p_status text, p_charged bigint, p_now timestamptz
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_held boolean := false;
    v_charged bigint := p_charged;
    v_rest bigint;
    v_kind text := CASE WHEN p_status = 'charged' THEN 'release' ELSE 'refund' END;
    v_current jobs;
BEGIN
    IF v_charged > 0 THEN
        SELECT owner_public_key, barred OR coalesce(held_until > p_now, false)
          INTO v_owner, v_held FROM nodes WHERE node_id = p_job.node_id;
        IF NOT FOUND THEN
            v_charged := 0;  -- a node with no row has no owner: charging would burn credits
            v_held := false;
        END IF;
    END IF;
    UPDATE jobs SET status = p_status, charged_millicredits = v_charged, settled_at = p_now
     WHERE job_id = p_job.job_id AND status = 'open';
    IF NOT FOUND THEN
        SELECT * INTO v_current FROM jobs WHERE job_id = p_job.job_id;
        RETURN troop_ledger_recorded(v_current);
    END IF;
    v_rest := p_job.reserved_millicredits - v_charged;
    IF v_charged > 0 AND v_held THEN
        INSERT INTO held_earnings (job_id, node_id, owner_public_key, user_public_key,
            amount_millicredits, held_at)
        VALUES (p_job.job_id, p_job.node_id, v_owner, p_job.user_public_key, v_charged, p_now);
        IF v_rest > 0 THEN
            PERFORM troop_ledger_credit(p_job.user_public_key, v_kind, v_rest, p_job.job_id, p_now);
        END IF;
        RETURN ROW('ok', p_job.job_id, p_status, v_charged, v_rest, false, false, false, false,
            p_job.node_id)::troop_ledger_result;
    END IF;
    IF v_charged > 0 THEN
        INSERT INTO users (public_key, balance_millicredits, starter_granted_at, created_at)
        VALUES (v_owner, 0, NULL, p_now) ON CONFLICT (public_key) DO NOTHING;
    END IF;
    IF v_charged > 0
       AND (v_rest <= 0 OR v_owner COLLATE "C" <= p_job.user_public_key COLLATE "C") THEN
        PERFORM troop_ledger_credit(v_owner, 'earn', v_charged, p_job.job_id, p_now);
        IF v_rest > 0 THEN
            PERFORM troop_ledger_credit(p_job.user_public_key, v_kind, v_rest, p_job.job_id, p_now);
        END IF;
    ELSE
        IF v_rest > 0 THEN
            PERFORM troop_ledger_credit(p_job.user_public_key, v_kind, v_rest, p_job.job_id, p_now);
        END IF;
        IF v_charged > 0 THEN
            PERFORM troop_ledger_credit(v_owner, 'earn', v_charged, p_job.job_id, p_now);
        END IF;
    END IF;
    RETURN ROW('ok', p_job.job_id, p_status, v_charged, v_rest, false, false, false, false,
        p_job.node_id)::troop_ledger_result;
END
$$
""",
    # Settling._record_receipt, keeping the first receipt's evidence digest (NULL: none).
    """
CREATE FUNCTION troop_ledger_record_receipt(
    p_job_id text, p_node_id text, p_failed boolean, p_prompt_tokens bigint,
    p_completion_tokens bigint, p_duration_ms bigint, p_deadline timestamptz,
    p_now timestamptz, p_evidence_sha256 text, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    SELECT * INTO v_job FROM jobs WHERE job_id = p_job_id;
    IF NOT FOUND THEN
        RETURN ROW('not_found', p_job_id, NULL, 0, 0, false, false, false, false, NULL)
            ::troop_ledger_result;
    END IF;
    IF v_job.node_id <> p_node_id THEN
        RETURN ROW('wrong_party', p_job_id, NULL, 0, 0, false, false, false, false, NULL)
            ::troop_ledger_result;
    END IF;
    UPDATE jobs SET node_prompt_tokens = p_prompt_tokens,
                    node_completion_tokens = p_completion_tokens,
                    node_duration_ms = p_duration_ms,
                    countersign_deadline = p_deadline,
                    evidence_sha256 = p_evidence_sha256
     WHERE job_id = p_job_id AND node_duration_ms IS NULL
    RETURNING * INTO v_job;
    IF NOT FOUND THEN
        SELECT * INTO v_job FROM jobs WHERE job_id = p_job_id;
        RETURN troop_ledger_recorded(v_job);
    END IF;
    IF v_job.status <> 'open' THEN
        RETURN troop_ledger_compare_late(v_job, p_now, p_rules);
    END IF;
    IF p_failed THEN
        RETURN troop_ledger_close(v_job, 'refunded', 0, p_now);
    END IF;
    IF v_job.usage_reported_at IS NULL THEN
        RETURN troop_ledger_pending(v_job);
    END IF;
    RETURN troop_ledger_settle_claimed(v_job, p_now, p_rules);
END
$$
""",
)


def _close_of_0007() -> str:
    """0007's `troop_ledger_close`, as that migration wrote it (to put it back)."""
    path = Path(__file__).with_name("0007_ledger_procedures.py")
    spec = importlib.util.spec_from_file_location("troop_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (text,) = (f for f in module._FUNCTIONS if "FUNCTION troop_ledger_close(" in f)
    return str(text).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        for name in ("checks_passed", "checks_failed"):
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_checked", TS, nullable=True))
        batch.add_column(sa.Column("held_until", TS, nullable=True))
        batch.add_column(sa.Column("failed_models", JSON, nullable=True))
        batch.add_column(
            sa.Column("barred", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("evidence_sha256", sa.String(64), nullable=True))
    op.create_table(
        "verdicts",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("verifier_public_key", sa.String(64), nullable=False),
        sa.Column("verdict", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index(
        "ix_verdicts_node_outcome_received", "verdicts", ["node_id", "outcome", "received_at"]
    )
    op.create_table(
        "held_earnings",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("owner_public_key", sa.String(64), nullable=False),
        sa.Column("user_public_key", sa.String(64), nullable=False),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("held_at", TS, nullable=False),
        sa.Column("settled_at", TS, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.CheckConstraint("amount_millicredits > 0", name="ck_held_earnings_amount"),
    )
    op.create_index("ix_held_earnings_node_settled", "held_earnings", ["node_id", "settled_at"])
    if op.get_bind().dialect.name == "postgresql":
        for statement in _FUNCTIONS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {RECORD_RECEIPT}")
        op.execute(_close_of_0007())
    op.drop_index("ix_held_earnings_node_settled", table_name="held_earnings")
    op.drop_table("held_earnings")
    op.drop_index("ix_verdicts_node_outcome_received", table_name="verdicts")
    op.drop_table("verdicts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("evidence_sha256")
    with op.batch_alter_table("nodes") as batch:
        for name in ("barred", "failed_models", "held_until", "last_checked"):
            batch.drop_column(name)
        for name in ("checks_failed", "checks_passed"):
            batch.drop_column(name)

"""A job whose node never sent its receipt settles on its client's countersignature (ADR 48).

The PostgreSQL side of `troop_coordinator.ledger.settling`'s change, statement for
statement (docs/adr/0034):

- `troop_ledger_record_countersignature` takes `p_deadline`: a report that finds no
  receipt starts the node's clock (`jobs.countersign_deadline`), as a receipt starts the
  client's. A new function next to 0007's (one more argument), which stays: a replica still
  running the previous release keeps calling it during a rolling upgrade (its reports start
  no clock, so their jobs settle at expiry instead, by the sweep below).
- `troop_ledger_settle_countersigned` (new): `Settling._settle_countersigned`.
- `troop_ledger_close_open` (replaced): a job with no receipt but a countersignature of
  tokens delivered settles on it instead of expiring.

No table changes. SQLite gets nothing: it keeps the Python flows. Downgrading drops the two
new functions and puts 0007's `troop_ledger_close_open` back.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_COUNTERSIGNATURE = (
    "troop_ledger_record_countersignature"
    "(text, text, bigint, bigint, timestamptz, timestamptz, troop_ledger_rules)"
)

_FUNCTIONS = (
    # Settling._settle_countersigned. settlement.countersigned_terms: the client's count at
    # the job's price, no prompt tokens, at most the reservation, which is the rule's terms
    # for a node that claimed exactly that count and no prompt (no dispute, slack 0).
    """
CREATE FUNCTION troop_ledger_settle_countersigned(
    p_job jobs, p_now timestamptz, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_charged bigint;
    v_result troop_ledger_result;
BEGIN
    SELECT t.charged INTO v_charged FROM troop_ledger_terms(
        p_job.reserved_millicredits, p_job.prompt_price_per_1k, p_job.completion_price_per_1k,
        0, p_job.client_completion_tokens, p_job.client_completion_tokens, 0) AS t;
    v_result := troop_ledger_close(p_job, 'charged', v_charged, p_now);
    IF NOT v_result.already_settled THEN
        UPDATE nodes SET reputation = reputation * p_rules.failed_job_factor
         WHERE node_id = p_job.node_id;
    END IF;
    RETURN v_result;
END
$$
""",
    # Settling._record_countersignature.
    """
CREATE FUNCTION troop_ledger_record_countersignature(
    p_job_id text, p_user text, p_completion_tokens bigint, p_stream_ms bigint,
    p_deadline timestamptz, p_now timestamptz, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_result troop_ledger_result;
BEGIN
    SELECT * INTO v_job FROM jobs WHERE job_id = p_job_id;
    IF NOT FOUND THEN
        RETURN ROW('not_found', p_job_id, NULL, 0, 0, false, false, false, false, NULL)
            ::troop_ledger_result;
    END IF;
    IF v_job.user_public_key <> p_user THEN
        RETURN ROW('wrong_party', p_job_id, NULL, 0, 0, false, false, false, false, NULL)
            ::troop_ledger_result;
    END IF;
    UPDATE jobs SET client_completion_tokens = p_completion_tokens,
                    client_stream_ms = p_stream_ms,
                    usage_reported_at = p_now,
                    countersign_deadline = CASE WHEN node_duration_ms IS NULL THEN p_deadline
                                                ELSE countersign_deadline END
     WHERE job_id = p_job_id AND usage_reported_at IS NULL
    RETURNING * INTO v_job;
    IF NOT FOUND THEN
        SELECT * INTO v_job FROM jobs WHERE job_id = p_job_id;
        RETURN troop_ledger_recorded(v_job);
    END IF;
    IF v_job.status <> 'open' THEN
        v_result := troop_ledger_compare_late(v_job, p_now, p_rules);
    ELSIF v_job.node_duration_ms IS NULL THEN
        IF p_completion_tokens = 0 THEN
            -- Nothing delivered: the job costs nothing whatever the node claims.
            UPDATE nodes SET reputation = reputation * p_rules.failed_job_factor
             WHERE node_id = v_job.node_id;
            v_result := troop_ledger_close(v_job, 'refunded', 0, p_now);
        ELSE
            v_result := troop_ledger_pending(v_job);
        END IF;
    ELSE
        v_result := troop_ledger_settle_claimed(v_job, p_now, p_rules);
    END IF;
    v_result.new_claim := true;
    RETURN v_result;
END
$$
""",
    # Settling._close_open (the sweeps): settle on the receipt, else on the client's count
    # of tokens delivered, else expire; 'none' if the job was settled meanwhile.
    """
CREATE OR REPLACE FUNCTION troop_ledger_close_open(
    p_job_id text, p_now timestamptz, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_result troop_ledger_result;
BEGIN
    SELECT * INTO v_job FROM jobs WHERE job_id = p_job_id;
    IF NOT FOUND OR v_job.status <> 'open' THEN
        RETURN ROW('none', p_job_id, NULL, 0, 0, true, false, false, false, NULL)
            ::troop_ledger_result;
    END IF;
    IF v_job.node_duration_ms IS NOT NULL THEN
        v_result := troop_ledger_settle_claimed(v_job, p_now, p_rules);
    ELSIF coalesce(v_job.client_completion_tokens, 0) > 0 THEN
        v_result := troop_ledger_settle_countersigned(v_job, p_now, p_rules);
    ELSE
        v_result := troop_ledger_close(v_job, 'expired', 0, p_now);
        IF NOT v_result.already_settled AND v_job.usage_reported_at IS NULL THEN
            UPDATE nodes SET reputation = reputation * p_rules.failed_job_factor
             WHERE node_id = v_job.node_id;
        END IF;
    END IF;
    IF v_result.already_settled THEN
        v_result.outcome := 'none';
    END IF;
    RETURN v_result;
END
$$
""",
)


def _close_open_of_0007() -> str:
    """0007's `troop_ledger_close_open`, as that migration wrote it (to put it back)."""
    path = Path(__file__).with_name("0007_ledger_procedures.py")
    spec = importlib.util.spec_from_file_location("troop_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (text,) = (f for f in module._FUNCTIONS if "FUNCTION troop_ledger_close_open(" in f)
    return str(text).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _FUNCTIONS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_close_open_of_0007())
    op.execute(f"DROP FUNCTION IF EXISTS {RECORD_COUNTERSIGNATURE}")
    op.execute(
        "DROP FUNCTION IF EXISTS troop_ledger_settle_countersigned"
        "(jobs, timestamptz, troop_ledger_rules)"
    )

"""Ledger procedures: on PostgreSQL each money-moving call is one function, one round trip.

`troop_ledger_reserve`, `troop_ledger_record_receipt`,
`troop_ledger_record_countersignature` and `troop_ledger_close_open` (the
sweeps) do, statement for statement, what the Python flows in
`troop_coordinator.ledger.settling` do on SQLite: the same conditional
UPDATEs as claims, the same lock order, the same entries. The settlement rule
(`troop_ledger_terms`, `troop_ledger_far_below_proof`) mirrors
`troop_coordinator.ledger.settlement`; its numbers (slack, reputation factors,
speed thresholds) are not here but passed by the caller as a
`troop_ledger_rules` row, and `tests/state/test_ledger_procedures.py` holds the
two rules to the same answers. A function runs as one transaction: it moves
everything or nothing (docs/adr/0034).

SQLite gets nothing: it keeps the Python flows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TYPES = (
    """
CREATE TYPE troop_ledger_result AS (
    outcome text,            -- ok, not_found, wrong_party, none (a sweep found it settled)
    job_id text,
    status text,
    charged bigint,
    released bigint,
    already_settled boolean,
    disputed boolean,
    new_claim boolean,       -- a countersignature: this report was the job's first
    proof_withdrawn boolean, -- the job's node ran far below its proof: proof withdrawn
    node_id text
)
""",
    """
CREATE TYPE troop_ledger_rules AS (
    token_slack bigint,
    dispute_factor double precision,
    agree_step double precision,
    failed_job_factor double precision,
    speed_sample_tokens bigint,
    slow_share double precision,
    slow_jobs_to_unprove bigint
)
""",
)

_FUNCTIONS = (
    # The settlement rule (troop_coordinator.ledger.settlement.terms_for). Arithmetic in
    # numeric: no bigint overflow where Python has none.
    """
CREATE FUNCTION troop_ledger_terms(
    p_reserved bigint, p_prompt_price bigint, p_completion_price bigint,
    p_node_prompt bigint, p_node_completion bigint, p_client_completion bigint,
    p_token_slack bigint, OUT charged bigint, OUT dispute text
) LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_node bigint := coalesce(p_node_completion, 0);
    v_completion bigint;
    v_prompt bigint;
BEGIN
    v_completion := CASE WHEN p_client_completion IS NULL THEN v_node
                         ELSE least(v_node, p_client_completion) END;
    v_prompt := CASE WHEN v_completion > 0 THEN coalesce(p_node_prompt, 0) ELSE 0 END;
    charged := least(
        p_reserved::numeric,
        floor((v_prompt::numeric * coalesce(p_prompt_price, 0)
               + v_completion::numeric * coalesce(p_completion_price, 0) + 500) / 1000)
    )::bigint;
    dispute := NULL;
    IF p_client_completion IS NOT NULL AND abs(v_node - p_client_completion) > p_token_slack THEN
        dispute := format('node claimed %s completion tokens, client countersigned %s',
                          v_node, p_client_completion);
    END IF;
END
$$
""",
    # settlement.far_below_proof: NULL when the job says nothing.
    """
CREATE FUNCTION troop_ledger_far_below_proof(
    p_reported boolean, p_tokens bigint, p_stream_ms bigint, p_completion_price bigint,
    p_multiplier double precision, p_sample_tokens bigint, p_slow_share double precision
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT p_reported OR p_multiplier <= 1.0 THEN
        RETURN NULL;
    END IF;
    IF p_tokens < p_sample_tokens OR p_stream_ms <= 0 OR coalesce(p_completion_price, 0) <= 0 THEN
        RETURN NULL;
    END IF;
    RETURN (p_tokens * 1000)::double precision / p_stream_ms
        < p_slow_share * (1000000::double precision / p_completion_price);
END
$$
""",
    """
CREATE FUNCTION troop_ledger_job_terms(p_job jobs, p_token_slack bigint,
    OUT charged bigint, OUT dispute text) LANGUAGE sql STABLE AS $$
    SELECT t.charged, t.dispute FROM troop_ledger_terms(
        p_job.reserved_millicredits, p_job.prompt_price_per_1k, p_job.completion_price_per_1k,
        p_job.node_prompt_tokens, p_job.node_completion_tokens,
        CASE WHEN p_job.usage_reported_at IS NOT NULL THEN p_job.client_completion_tokens END,
        p_token_slack) AS t
$$
""",
    # settling._recorded: the job as it stands, for a call that changed nothing.
    """
CREATE FUNCTION troop_ledger_recorded(p_job jobs) RETURNS troop_ledger_result
LANGUAGE sql STABLE AS $$
    SELECT ROW('ok', p_job.job_id, p_job.status, coalesce(p_job.charged_millicredits, 0),
        CASE WHEN p_job.status = 'open' THEN 0
             ELSE p_job.reserved_millicredits - coalesce(p_job.charged_millicredits, 0) END,
        true, false, false, false, p_job.node_id)::troop_ledger_result
$$
""",
    # settling._pending: a job waiting for its other side.
    """
CREATE FUNCTION troop_ledger_pending(p_job jobs) RETURNS troop_ledger_result
LANGUAGE sql STABLE AS $$
    SELECT ROW('ok', p_job.job_id, 'open', 0, 0, false, false, false, false, p_job.node_id)
        ::troop_ledger_result
$$
""",
    # repository.credit + append: one movement, one entry with the balance after it.
    """
CREATE FUNCTION troop_ledger_credit(
    p_account text, p_kind text, p_amount bigint, p_job_id text, p_now timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_after bigint;
BEGIN
    UPDATE users SET balance_millicredits = balance_millicredits + p_amount
     WHERE public_key = p_account
    RETURNING balance_millicredits INTO STRICT v_after;
    INSERT INTO ledger_entries
        (created_at, account, kind, amount_millicredits, job_id, balance_after_millicredits)
    VALUES (p_now, p_account, p_kind, p_amount, p_job_id, v_after);
END
$$
""",
    # settling._close: the claim (open -> status), then the owner's pay and the user's
    # rest, credited in public-key order (code points, as Python sorts) against deadlocks.
    """
CREATE FUNCTION troop_ledger_close(
    p_job jobs, p_status text, p_charged bigint, p_now timestamptz
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_charged bigint := p_charged;
    v_rest bigint;
    v_kind text := CASE WHEN p_status = 'charged' THEN 'release' ELSE 'refund' END;
    v_current jobs;
BEGIN
    IF v_charged > 0 THEN
        SELECT owner_public_key INTO v_owner FROM nodes WHERE node_id = p_job.node_id;
        IF NOT FOUND THEN
            v_charged := 0;  -- a node with no row has no owner: charging would burn credits
        END IF;
    END IF;
    UPDATE jobs SET status = p_status, charged_millicredits = v_charged, settled_at = p_now
     WHERE job_id = p_job.job_id AND status = 'open';
    IF NOT FOUND THEN
        SELECT * INTO v_current FROM jobs WHERE job_id = p_job.job_id;
        RETURN troop_ledger_recorded(v_current);
    END IF;
    v_rest := p_job.reserved_millicredits - v_charged;
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
    # settling._dispute: once per job; the node's reputation falls.
    """
CREATE FUNCTION troop_ledger_dispute(
    p_job jobs, p_reason text, p_now timestamptz, p_factor double precision
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO disputes (job_id, node_id, user_public_key, created_at, reason,
        node_completion_tokens, client_completion_tokens, node_duration_ms, client_stream_ms)
    VALUES (p_job.job_id, p_job.node_id, p_job.user_public_key, p_now, left(p_reason, 200),
        p_job.node_completion_tokens, p_job.client_completion_tokens, p_job.node_duration_ms,
        p_job.client_stream_ms)
    ON CONFLICT (job_id) DO NOTHING;
    IF FOUND THEN
        UPDATE nodes SET reputation = reputation * p_factor WHERE node_id = p_job.node_id;
    END IF;
END
$$
""",
    # repository.note_speed: count slow jobs in a row; withdraw the proof at the limit.
    """
CREATE FUNCTION troop_ledger_note_speed(
    p_node_id text, p_slow boolean, p_withdraw_after bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    IF NOT p_slow THEN
        UPDATE nodes SET slow_jobs = 0 WHERE node_id = p_node_id;
        RETURN false;
    END IF;
    UPDATE nodes SET slow_jobs = slow_jobs + 1 WHERE node_id = p_node_id
    RETURNING slow_jobs INTO v_count;
    IF v_count IS NULL OR v_count < p_withdraw_after THEN
        RETURN false;
    END IF;
    UPDATE nodes SET slow_jobs = 0, multiplier = 1.0, proven = false WHERE node_id = p_node_id;
    RETURN true;
END
$$
""",
    # settling._compare_late: a claim after its job settled moves nothing, may dispute.
    """
CREATE FUNCTION troop_ledger_compare_late(
    p_job jobs, p_now timestamptz, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_result troop_ledger_result := troop_ledger_recorded(p_job);
    v_terms record;
BEGIN
    IF p_job.node_duration_ms IS NOT NULL AND p_job.usage_reported_at IS NOT NULL THEN
        SELECT * INTO v_terms FROM troop_ledger_job_terms(p_job, p_rules.token_slack);
        IF v_terms.dispute IS NOT NULL THEN
            PERFORM troop_ledger_dispute(p_job, v_terms.dispute, p_now, p_rules.dispute_factor);
            v_result.disputed := true;
        END IF;
    END IF;
    RETURN v_result;
END
$$
""",
    # settling._settle_claimed: charge a job that has its node's claim, once.
    """
CREATE FUNCTION troop_ledger_settle_claimed(
    p_job jobs, p_now timestamptz, p_rules troop_ledger_rules
) RETURNS troop_ledger_result LANGUAGE plpgsql AS $$
DECLARE
    v_terms record;
    v_result troop_ledger_result;
    v_multiplier double precision;
    v_slow boolean;
BEGIN
    SELECT * INTO v_terms FROM troop_ledger_job_terms(p_job, p_rules.token_slack);
    v_result := troop_ledger_close(p_job, 'charged', v_terms.charged, p_now);
    IF v_result.already_settled THEN
        RETURN v_result;
    END IF;
    IF v_terms.dispute IS NOT NULL THEN
        PERFORM troop_ledger_dispute(p_job, v_terms.dispute, p_now, p_rules.dispute_factor);
    ELSIF p_job.usage_reported_at IS NOT NULL THEN
        UPDATE nodes SET reputation = least(1.0, reputation + p_rules.agree_step)
         WHERE node_id = p_job.node_id;
    END IF;
    SELECT multiplier INTO v_multiplier FROM nodes WHERE node_id = p_job.node_id;
    IF FOUND THEN
        v_slow := troop_ledger_far_below_proof(
            p_job.usage_reported_at IS NOT NULL, p_job.client_completion_tokens,
            p_job.client_stream_ms, p_job.completion_price_per_1k, v_multiplier,
            p_rules.speed_sample_tokens, p_rules.slow_share);
        IF v_slow IS NOT NULL THEN
            v_result.proof_withdrawn := troop_ledger_note_speed(
                p_job.node_id, v_slow, p_rules.slow_jobs_to_unprove);
        END IF;
    END IF;
    v_result.disputed := v_terms.dispute IS NOT NULL;
    RETURN v_result;
END
$$
""",
    # Ledger._reserve: the user joined? under the cap of open jobs? then debit if
    # covered, the job, its RESERVE entry; or nothing and why (with the balance as it
    # is, or the open jobs and the first of their expiries).
    """
CREATE FUNCTION troop_ledger_reserve(
    p_job_id text, p_user text, p_node_id text, p_model text, p_reserved bigint,
    p_created_at timestamptz, p_expires_at timestamptz, p_max_prompt_tokens bigint,
    p_max_tokens bigint, p_prompt_price bigint, p_completion_price bigint,
    p_max_open_jobs bigint,  -- NULL: no cap
    OUT outcome text,        -- reserved, not_joined, over_cap, short (credits)
    OUT balance_after bigint,
    OUT open_jobs bigint,    -- over_cap: the user's open jobs and the first to expire
    OUT first_expiry timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_granted timestamptz;
BEGIN
    -- The user's row first, locked: one user's reservations queue here, and at READ
    -- COMMITTED each statement below sees every earlier one committed, so the count
    -- of open jobs cannot be raced past. (The only row this call locks: no new order.)
    SELECT starter_granted_at, balance_millicredits INTO v_granted, balance_after
      FROM users WHERE public_key = p_user FOR UPDATE;
    IF NOT FOUND OR v_granted IS NULL THEN
        outcome := 'not_joined';
        balance_after := NULL;
        RETURN;
    END IF;
    IF p_max_open_jobs IS NOT NULL THEN
        SELECT count(*), min(expires_at) INTO open_jobs, first_expiry
          FROM jobs WHERE user_public_key = p_user AND status = 'open';
        IF open_jobs >= p_max_open_jobs THEN
            outcome := 'over_cap';
            RETURN;
        END IF;
        open_jobs := NULL;
        first_expiry := NULL;
    END IF;
    UPDATE users SET balance_millicredits = balance_millicredits - p_reserved
     WHERE public_key = p_user AND balance_millicredits >= p_reserved
    RETURNING balance_millicredits INTO balance_after;
    IF NOT FOUND THEN
        outcome := 'short';
        SELECT balance_millicredits INTO balance_after FROM users WHERE public_key = p_user;
        RETURN;
    END IF;
    INSERT INTO jobs (job_id, user_public_key, node_id, model, reserved_millicredits, status,
        created_at, expires_at, max_prompt_tokens, max_tokens, prompt_price_per_1k,
        completion_price_per_1k)
    VALUES (p_job_id, p_user, p_node_id, p_model, p_reserved, 'open', p_created_at,
        p_expires_at, p_max_prompt_tokens, p_max_tokens, p_prompt_price, p_completion_price);
    INSERT INTO ledger_entries
        (created_at, account, kind, amount_millicredits, job_id, balance_after_millicredits)
    VALUES (p_created_at, p_user, 'reserve', -p_reserved, p_job_id, balance_after);
    outcome := 'reserved';
END
$$
""",
    # Settling._record_receipt.
    """
CREATE FUNCTION troop_ledger_record_receipt(
    p_job_id text, p_node_id text, p_failed boolean, p_prompt_tokens bigint,
    p_completion_tokens bigint, p_duration_ms bigint, p_deadline timestamptz,
    p_now timestamptz, p_rules troop_ledger_rules
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
                    countersign_deadline = p_deadline
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
    # Settling._record_countersignature.
    """
CREATE FUNCTION troop_ledger_record_countersignature(
    p_job_id text, p_user text, p_completion_tokens bigint, p_stream_ms bigint,
    p_now timestamptz, p_rules troop_ledger_rules
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
                    usage_reported_at = p_now
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
    # Settling._close_open (the sweeps): settle on the receipt, else expire; 'none' if the
    # job was settled meanwhile (here or on another replica).
    """
CREATE FUNCTION troop_ledger_close_open(
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

# Dropped callers first (a function's body is not a dependency PostgreSQL tracks).
_FUNCTION_NAMES = (
    "troop_ledger_close_open",
    "troop_ledger_record_countersignature",
    "troop_ledger_record_receipt",
    "troop_ledger_reserve",
    "troop_ledger_settle_claimed",
    "troop_ledger_compare_late",
    "troop_ledger_note_speed",
    "troop_ledger_dispute",
    "troop_ledger_close",
    "troop_ledger_credit",
    "troop_ledger_pending",
    "troop_ledger_recorded",
    "troop_ledger_job_terms",
    "troop_ledger_far_below_proof",
    "troop_ledger_terms",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in (*_TYPES, *_FUNCTIONS):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _FUNCTION_NAMES:
        op.execute(f"DROP FUNCTION IF EXISTS {name}")
    op.execute("DROP TYPE IF EXISTS troop_ledger_rules, troop_ledger_result")

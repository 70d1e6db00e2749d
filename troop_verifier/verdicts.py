"""A finding as the coordinator takes it: a `Verdict`, signed by the verifier's key.

The verifier's key is its own Ed25519 identity (`verifier.key` in its config dir,
created on first run); the operator lists its public key (`troop verifier
--print-key`) in the coordinator's TROOP_VERIFIER_KEYS.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2
from troop_verifier.judging import Finding, Outcome

REASON_LIMIT = 200
_OUTCOMES = {
    Outcome.PASSED: coordinator_pb2.VERDICT_OUTCOME_PASSED,
    Outcome.FAILED: coordinator_pb2.VERDICT_OUTCOME_FAILED,
}


def signed_verdict(
    verifier: Identity,
    *,
    job_id: str,
    node_id: str,
    model: str,
    finding: Finding,
    evidence: bytes,
    evidence_signature: bytes,
    now: datetime | None = None,
) -> coordinator_pb2.SubmitVerdictRequest:
    """The SubmitVerdict request for a decided finding (never an inconclusive one)."""
    if finding.outcome not in _OUTCOMES:
        raise ValueError(f"no verdict for an {finding.outcome} finding")
    checked_at = timestamp_pb2.Timestamp()
    checked_at.FromDatetime(now or datetime.now(UTC))
    verdict = coordinator_pb2.Verdict(
        job_id=job_id,
        node_id=node_id,
        model=model,
        outcome=_OUTCOMES[finding.outcome],
        positions_checked=finding.positions_checked,
        positions_failed=finding.positions_failed,
        reason=finding.reason[:REASON_LIMIT],
        evidence=evidence,
        evidence_signature=evidence_signature,
        checked_at=checked_at,
        verifier_public_key=verifier.public_key_hex,
    )
    data = verdict.SerializeToString(deterministic=True)
    return coordinator_pb2.SubmitVerdictRequest(verdict=data, signature=verifier.sign(data))

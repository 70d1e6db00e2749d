"""Signed verdicts for tests: a node's signed output evidence for a job, and a verifier's
signed Verdict about it, as `troop verifier` sends them (docs/adr/0053).

    evidence, signature = node_evidence(node_identity, job_id, node_id, model)
    request = signed_verdict(verifier, job_id=..., node_id=..., model=...,
                             evidence=evidence, evidence_signature=signature)
"""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from troop_common.evidence import TokenEvidence, build_evidence, sign_evidence
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb

MESSAGES = (("user", "Say hello."),)
TOKENS = (TokenEvidence(b"Hello", -0.25, 9906), TokenEvidence(b"!", -1.5, 0))


def node_evidence(
    node: Identity, job_id: str, node_id: str, model: str, tokens: Any = TOKENS
) -> tuple[bytes, bytes]:
    """(OutputEvidence bytes, the node's signature of them) for one job."""
    evidence = build_evidence(
        job_id=job_id, node_id=node_id, model=model, messages=MESSAGES, tokens=tokens
    )
    return evidence, sign_evidence(node, evidence)


def signed_verdict(
    verifier: Identity,
    *,
    job_id: str,
    node_id: str,
    model: str,
    evidence: bytes,
    evidence_signature: bytes,
    outcome: int = pb.VERDICT_OUTCOME_FAILED,
    positions_checked: int = 2,
    positions_failed: int | None = None,
    reason: str = "",
    verifier_public_key: str | None = None,
    signer: Identity | None = None,
) -> pb.SubmitVerdictRequest:
    """A SubmitVerdictRequest: the serialized Verdict and its signature by `signer` (the
    verifier by default; another to forge one)."""
    if positions_failed is None:
        positions_failed = positions_checked if outcome == pb.VERDICT_OUTCOME_FAILED else 0
    checked_at = timestamp_pb2.Timestamp()
    checked_at.GetCurrentTime()
    verdict = pb.Verdict(
        job_id=job_id,
        node_id=node_id,
        model=model,
        outcome=outcome,  # type: ignore[arg-type]
        positions_checked=positions_checked,
        positions_failed=positions_failed,
        reason=reason or ("another model's output" if outcome == pb.VERDICT_OUTCOME_FAILED else ""),
        evidence=evidence,
        evidence_signature=evidence_signature,
        checked_at=checked_at,
        verifier_public_key=verifier_public_key or verifier.public_key_hex,
    )
    data = verdict.SerializeToString(deterministic=True)
    return pb.SubmitVerdictRequest(verdict=data, signature=(signer or verifier).sign(data))


def verdict_for(
    verifier: Identity,
    node: Identity,
    job_id: str,
    node_id: str,
    model: str,
    **fields: Any,
) -> pb.SubmitVerdictRequest:
    """A verdict on a job with the node's own signed evidence for it."""
    evidence, signature = node_evidence(node, job_id, node_id, model)
    return signed_verdict(
        verifier,
        job_id=job_id,
        node_id=node_id,
        model=model,
        evidence=evidence,
        evidence_signature=signature,
        **fields,
    )

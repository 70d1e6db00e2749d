"""Verdicts acted on (docs/adr/0053): a trusted verifier's signed finding on one job.

`Verdicts.submit` checks a verdict (its fields; its signature by a key the operator
trusts, TROOP_VERIFIER_KEYS; the job, its node and model; the node's signature of the
evidence and that evidence's digest against the node's receipt — or, for a FAILED
verdict on a job whose node sent no evidence its key signed, that its receipt vouched
for none), then, in one
transaction, keeps it once per job and applies it to the node's record:

- PASSED: checks_passed + 1, last_checked.
- FAILED: checks_failed + 1, last_checked, held_until = now + the hold, the model kept
  off the node until then; TROOP_VERIFICATION_BAR_AFTER failures of its node key within
  the hold bar the key (every node id bound to it), and the pay held from its nodes goes
  back to the users who paid it (`troop_coordinator.ledger.held`).

The reputation penalty is not written: routing scales the node's reputation by a factor
that fades over the hold (`NodeChecks.reputation_factor`). Once committed, the record
reaches this coordinator's registry at once (and, through Redis, the other replicas'
mirrors) and the node's next heartbeat here reads its row (`NodeDirectory.forget`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.message import DecodeError

from troop_common.errors import (
    FailedPrecondition,
    NotFound,
    SignatureInvalid,
)
from troop_common.evidence import open_evidence
from troop_common.keys import verify_ed25519
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger.held import settle_held_row
from troop_coordinator.ledger.repository import LedgerRepository
from troop_coordinator.node_checks import NodeChecks
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.registry import NodeRegistry
from troop_coordinator.repositories.nodes import NodeRepository
from troop_coordinator.repositories.verdicts import VerdictRepository, VerdictRow
from troop_coordinator.validation import Violations

MAX_REASON = 200
_OUTCOMES = {pb.VERDICT_OUTCOME_PASSED: "passed", pb.VERDICT_OUTCOME_FAILED: "failed"}


@dataclass(frozen=True)
class VerificationPolicy:
    """Whose verdicts count, and what a failed one does."""

    trusted_keys: frozenset[str] = frozenset()
    hold_s: float = 259200.0
    bar_after: int = 3


@dataclass(frozen=True)
class VerdictResult:
    checks: NodeChecks  # the verdict's node's record after it
    duplicate: bool


def parse_verdict(data: bytes, signature: bytes) -> pb.Verdict:
    """The verdict, its fields checked: InvalidArgument naming every bad one."""
    check = Violations()
    verdict = pb.Verdict()
    try:
        verdict.ParseFromString(data)
    except DecodeError:
        check.add("verdict", "not a serialized Verdict")
        check.raise_if_any()
    if not data:
        check.add("verdict", "required")
    if len(signature) != 64:
        check.add("signature", "must be a 64-byte Ed25519 signature")
    if verdict.outcome not in _OUTCOMES:
        check.add("verdict.outcome", "PASSED or FAILED")
    check.job_id("verdict.job_id", verdict.job_id)
    check.node_id("verdict.node_id", verdict.node_id)
    check.model("verdict.model", verdict.model)
    check.public_key("verdict.verifier_public_key", verdict.verifier_public_key)
    if len(verdict.reason) > MAX_REASON:
        check.add("verdict.reason", f"at most {MAX_REASON} characters")
    if verdict.positions_failed > verdict.positions_checked:
        check.add("verdict.positions_failed", "at most positions_checked")
    if verdict.evidence:
        if len(verdict.evidence_signature) != 64:
            check.add("verdict.evidence_signature", "must be a 64-byte Ed25519 signature")
    elif verdict.outcome != pb.VERDICT_OUTCOME_FAILED:
        check.add("verdict.evidence", "required: the node's OutputEvidence bytes")
    elif verdict.evidence_signature:
        check.add("verdict.evidence_signature", "must be empty when evidence is")
    check.raise_if_any()
    return verdict


def _check_evidence(verdict: pb.Verdict, node_key: str, vouched: str | None) -> None:
    """The verdict's evidence is the node's, about this job, and what its receipt
    vouched for. A node that signed another model's name for the job confessed: that
    is let through for a FAILED verdict (the failure itself), not for a PASSED one."""
    evidence = open_evidence(verdict.evidence, verdict.evidence_signature, node_key)
    if (evidence.job_id, evidence.node_id) != (verdict.job_id, verdict.node_id):
        raise FailedPrecondition("the evidence is about another job or node")
    if evidence.model != verdict.model and verdict.outcome != pb.VERDICT_OUTCOME_FAILED:
        raise FailedPrecondition("the evidence is about another model")
    if vouched and vouched != hashlib.sha256(verdict.evidence).hexdigest():
        raise FailedPrecondition("the evidence is not what the node's receipt vouched for")


class Verdicts:
    def __init__(
        self,
        db: Database,
        nodes: NodeDirectory,
        registry: NodeRegistry,
        policy: VerificationPolicy,
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.registry = registry
        self.policy = policy

    async def submit(self, data: bytes, signature: bytes, now: datetime) -> VerdictResult:
        """Check and act on one signed verdict (module docstring)."""
        verdict = parse_verdict(data, signature)
        if verdict.verifier_public_key not in self.policy.trusted_keys:
            raise SignatureInvalid(
                "the verdict's verifier key is not one this coordinator trusts "
                "(TROOP_VERIFIER_KEYS)"
            )
        try:
            verify_ed25519(verdict.verifier_public_key, signature, data)
        except SignatureInvalid as exc:
            raise SignatureInvalid("the verdict is not signed by its verifier's key") from exc
        row = VerdictRow(
            job_id=verdict.job_id,
            node_id=verdict.node_id,
            model=verdict.model,
            outcome=_OUTCOMES[verdict.outcome],
            verifier_public_key=verdict.verifier_public_key,
            verdict=data,
            signature=signature,
            received_at=now,
        )
        result, changed = await self.db.transaction(
            lambda session: self._apply(LedgerRepository(session), verdict, row, now)
        )
        for node_id, checks in changed.items():
            self.nodes.forget(node_id)
            await self.registry.set_checks(node_id, checks)
        return result

    async def _apply(
        self, repo: LedgerRepository, verdict: pb.Verdict, row: VerdictRow, now: datetime
    ) -> tuple[VerdictResult, dict[str, NodeChecks]]:
        nodes = NodeRepository(repo.session)
        job = await repo.get_job(verdict.job_id)
        if job is None:
            raise NotFound(f"no job {verdict.job_id}")
        if (job.node_id, job.model) != (verdict.node_id, verdict.model):
            raise FailedPrecondition(
                f"job {job.job_id} ran on node {job.node_id} for model {job.model}, "
                "not the verdict's"
            )
        node_key = await nodes.bound_key(job.node_id)
        if node_key is None:
            raise SignatureInvalid("the job's node has no key on record")
        if verdict.evidence:
            _check_evidence(verdict, node_key, job.evidence_sha256)
        elif job.evidence_sha256:
            raise FailedPrecondition(
                "the node's receipt vouched for evidence: the verdict must carry it"
            )
        if not await VerdictRepository(repo.session).insert(row):
            checks = await nodes.checks(job.node_id)
            assert checks is not None
            return VerdictResult(checks, duplicate=True), {}
        passed = row.outcome == "passed"
        checks = await nodes.record_check(
            job.node_id,
            passed=passed,
            model=job.model,
            now=now,
            held_until=now + timedelta(seconds=self.policy.hold_s),
        )
        changed = {job.node_id: checks}
        if not passed and not checks.barred:
            bound = await nodes.ids_bound_to(node_key)
            window = now - timedelta(seconds=self.policy.hold_s)
            failures = await VerdictRepository(repo.session).failures_since(bound, window)
            if failures >= self.policy.bar_after:
                barred = await nodes.bar_key(node_key)
                for job_id in await repo.held.of_nodes(barred):
                    await settle_held_row(repo, job_id, now)
                for node_id in barred:
                    record = await nodes.checks(node_id)
                    assert record is not None
                    changed[node_id] = record
        return VerdictResult(changed[job.node_id], duplicate=False), changed

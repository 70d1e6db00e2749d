"""The output evidence a node sent with its answer, once its signature checks out.

The last chunk of a worker's stream carries the node's signed `OutputEvidence`: every
token it generated for the job with the log-probability its model gave it
(troop_common.evidence). The SDK keeps it on that chunk (`ChatChunk.evidence`) and on the
`Completion`, after verifying it with the key the coordinator pinned for the node in the
grant and checking it names this job and node. Evidence that does not verify is dropped
and logged, never raised: the answer is the user's either way, and only a verifier
(`troop verifier`) acts on evidence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from troop_common.errors import TroopError
from troop_common.evidence import TokenEvidence, open_evidence, tokens_of
from troop_common.proto import inference_pb2

log = logging.getLogger("troop.client")


@dataclass(frozen=True)
class VerifiedEvidence:
    """A node's signed output evidence for one job, its signature verified with the node's
    pinned key. `data` and `signature` are the bytes as the node sent them (what a verdict
    quotes); `tokens` the generated tokens with their log-probabilities; `model` the model
    the node claims produced them; `messages_sha256` its digest of the prompt."""

    job_id: str
    node_id: str
    node_public_key: str
    model: str
    messages_sha256: bytes
    tokens: tuple[TokenEvidence, ...]
    data: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def verified_evidence(
    chunk: inference_pb2.ChatCompletionResponse,
    *,
    job_id: str,
    node_id: str,
    node_public_key: str,
) -> VerifiedEvidence | None:
    """The chunk's evidence when it has some, signed by the node's key, about this job and
    node; None otherwise (a bad one is logged)."""
    if not chunk.evidence and not chunk.evidence_signature:
        return None
    try:
        parsed = open_evidence(chunk.evidence, chunk.evidence_signature, node_public_key)
    except TroopError as exc:
        log.warning("node %s sent output evidence that does not verify: %s", node_id, exc)
        return None
    if parsed.job_id != job_id or parsed.node_id != node_id:
        log.warning(
            "node %s sent output evidence for job %r of node %r, not job %s: dropped",
            node_id, parsed.job_id, parsed.node_id, job_id,
        )  # fmt: skip
        return None
    return VerifiedEvidence(
        job_id=parsed.job_id,
        node_id=parsed.node_id,
        node_public_key=node_public_key,
        model=parsed.model,
        messages_sha256=parsed.messages_sha256,
        tokens=tuple(tokens_of(parsed)),
        data=chunk.evidence,
        signature=chunk.evidence_signature,
    )

"""Output evidence: what a node signs about the tokens it produced for one job.

The worker sends, in the last chunk of a completion stream, a serialized
`OutputEvidence` (the job, node, model, a digest of the prompt's messages and
every generated token with the log-probability its model gave it) and its
Ed25519 signature of those bytes; its receipt carries their SHA-256. A verifier
recomputes the log-probabilities on a trusted copy of the model
(`troop_verifier`), and a failed check comes with bytes the node signed.
Like receipts, the evidence travels serialized next to its signature, so
whoever checks it verifies exactly the bytes it then parses.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from troop_common.errors import FieldViolation, InvalidArgument, SignatureInvalid
from troop_common.keys import Identity, verify_ed25519
from troop_common.proto import inference_pb2

# A log-probability below this is stored as this (a float32 keeps it exactly, and
# -inf would not survive JSON): no check distinguishes e^-1000 from zero.
MIN_LOGPROB = -1000.0


@dataclass(frozen=True)
class TokenEvidence:
    """One generated token: its bytes, its id when the engine knows it, and the
    natural log of its probability under the model's raw next-token distribution."""

    token: bytes
    logprob: float
    token_id: int | None = None

    def to_pb(self) -> inference_pb2.TokenLogprob:
        logprob = self.logprob if math.isfinite(self.logprob) else MIN_LOGPROB
        message = inference_pb2.TokenLogprob(
            token=self.token, logprob=min(0.0, max(MIN_LOGPROB, logprob))
        )
        if self.token_id is not None:
            message.token_id = self.token_id
        return message

    @classmethod
    def from_pb(cls, message: inference_pb2.TokenLogprob) -> TokenEvidence:
        token_id = message.token_id if message.HasField("token_id") else None
        return cls(message.token, message.logprob, token_id)


def messages_sha256(messages: Iterable[tuple[str, str]]) -> bytes:
    """SHA-256 over (role, content) pairs, each as role + "\\n" + the content's UTF-8
    byte length in decimal + "\\n" + content: unambiguous, and easy in any language."""
    digest = hashlib.sha256()
    for role, content in messages:
        data = content.encode()
        digest.update(role.encode() + b"\n" + str(len(data)).encode() + b"\n" + data)
    return digest.digest()


def build_evidence(
    *,
    job_id: str,
    node_id: str,
    model: str,
    messages: Iterable[tuple[str, str]],
    tokens: Sequence[TokenEvidence],
) -> bytes:
    """The serialized OutputEvidence a node signs for one job."""
    evidence = inference_pb2.OutputEvidence(
        job_id=job_id,
        node_id=node_id,
        model=model,
        messages_sha256=messages_sha256(messages),
        tokens=[token.to_pb() for token in tokens],
    )
    return evidence.SerializeToString(deterministic=True)


def sign_evidence(node: Identity, evidence: bytes) -> bytes:
    return node.sign(evidence)


def evidence_sha256(evidence: bytes) -> bytes:
    """What the node's receipt carries about the evidence it sent (empty: none)."""
    return hashlib.sha256(evidence).digest() if evidence else b""


def open_evidence(
    evidence: bytes, signature: bytes, node_public_key_hex: str
) -> inference_pb2.OutputEvidence:
    """The evidence, once its signature verifies with the node's key.

    InvalidArgument if it is missing or not an OutputEvidence; SignatureInvalid if
    the node's key did not sign these bytes."""
    violations = []
    if not evidence:
        violations.append(FieldViolation("evidence", "required"))
    if len(signature) != 64:
        violations.append(
            FieldViolation("evidence_signature", "must be a 64-byte Ed25519 signature")
        )
    parsed = inference_pb2.OutputEvidence()
    if evidence:
        try:
            parsed.ParseFromString(evidence)
        except DecodeError:
            violations.append(FieldViolation("evidence", "not a serialized OutputEvidence"))
    if violations:
        raise InvalidArgument(violations)
    try:
        verify_ed25519(node_public_key_hex, signature, evidence)
    except SignatureInvalid as exc:
        raise SignatureInvalid("the evidence is not signed by the node's key") from exc
    return parsed


def tokens_of(evidence: inference_pb2.OutputEvidence) -> list[TokenEvidence]:
    return [TokenEvidence.from_pb(token) for token in evidence.tokens]

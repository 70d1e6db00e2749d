"""A job's output evidence, collected from its chunks and signed for the last one.

Every chunk the engine yields carries the tokens it generated since the one before
(`GenerationChunk.tokens`); the servicer hands them here as they come, and on the last
chunk the node signs them, bound to the job, the node, the model and the prompt
(troop_common.evidence). At most the job's max_tokens tokens are kept. An engine that
reports no tokens (a relay whose upstream sends no log-probabilities) gets no evidence:
the last chunk carries none and the receipt's digest is empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from troop_common.evidence import TokenEvidence, build_evidence, evidence_sha256, sign_evidence
from troop_common.keys import Identity


@dataclass(frozen=True)
class SignedEvidence:
    data: bytes = b""
    signature: bytes = b""

    @property
    def sha256(self) -> bytes:
        """What the receipt carries (empty: no evidence)."""
        return evidence_sha256(self.data)


@dataclass
class EvidenceCollector:
    """`add(chunk.tokens)` per chunk, then `seal(...)` once, for the last chunk."""

    max_tokens: int
    tokens: list[TokenEvidence] = field(default_factory=list)

    def add(self, tokens: Iterable[TokenEvidence]) -> None:
        for token in tokens:
            if len(self.tokens) >= self.max_tokens:
                return
            self.tokens.append(token)

    def seal(
        self,
        node: Identity | None,
        *,
        job_id: str,
        node_id: str,
        model: str,
        messages: Iterable[tuple[str, str]],
    ) -> SignedEvidence:
        """The signed evidence of the tokens collected; empty without a node key or tokens."""
        if node is None or not self.tokens:
            return SignedEvidence()
        data = build_evidence(
            job_id=job_id, node_id=node_id, model=model, messages=messages, tokens=self.tokens
        )
        return SignedEvidence(data, sign_evidence(node, data))

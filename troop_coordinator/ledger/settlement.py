"""The settlement rule: what a job is charged once its node and its client have spoken.

Pure (a job row in, terms out), so the rule is written and tested in one place
(docs/adr/0031):

- completion tokens charged = the lower of the node's receipt and the client's
  countersignature (the node's alone when the client never countersigned by
  the deadline; the client's alone when the node never sent its receipt by
  the deadline: `countersigned_terms`);
- prompt tokens charged = the node's count, but only when at least one
  completion token is charged: prompt processing a client cancelled before
  its first token, or a stream that delivered nothing, is not billed;
- charge = the model's price (fixed at Authorize) of those tokens, never more
  than the reservation;
- the two sides differing by more than `token_slack` completion tokens is a
  dispute, recorded on the node and on the user (which one lied is unknown).

`far_below_proof` is the cross-check of a node's proof of hardware against the
speed its clients countersign: a node that proved faster than the reference
machine (multiplier > 1) but whose countersigned decode speed is under half the
reference machine's for this model (from the price anchor: 10⁶ / completion
price per 1k tokens/s) ran far below its proof. Matrix throughput does not
predict decode speed linearly (decoding is memory-bound), so only this gross
gap counts; SLOW_JOBS_TO_UNPROVE such jobs in a row withdraw the proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from troop_coordinator.db.models import JobStatus
from troop_coordinator.pricing import ModelPrice

# A job must produce this many tokens for its speed to say anything.
SPEED_SAMPLE_TOKENS = 16
SLOW_SHARE = 0.5
SLOW_JOBS_TO_UNPROVE = 5


@dataclass(frozen=True)
class Terms:
    charged: int
    prompt_tokens: int
    completion_tokens: int
    dispute: str | None  # why the two sides disagree, or None


def terms_for(job: Any, *, token_slack: int) -> Terms:
    """The terms of a job row that carries the node's claim (and maybe the client's)."""
    node_completion = int(job.node_completion_tokens or 0)
    client = job.client_completion_tokens if job.usage_reported_at is not None else None
    completion = node_completion if client is None else min(node_completion, int(client))
    prompt = int(job.node_prompt_tokens or 0) if completion > 0 else 0
    charged = min(int(job.reserved_millicredits), _price(job).charge(prompt, completion))
    dispute = None
    if client is not None and abs(node_completion - int(client)) > token_slack:
        dispute = (
            f"node claimed {node_completion} completion tokens, client countersigned {int(client)}"
        )
    return Terms(charged, prompt, completion, dispute)


def countersigned_terms(job: Any) -> Terms:
    """The terms of a job whose node never sent its receipt (killed mid-stream), on the
    client's countersignature alone: its completion tokens at the job's price, never more
    than the reservation. No prompt tokens: only the node could count them, and it never
    said. The client is the payer, so its own count can only lower what it pays; the node
    has no say in it, so there is nothing to dispute."""
    completion = int(job.client_completion_tokens or 0)
    charged = min(int(job.reserved_millicredits), _price(job).charge(0, completion))
    return Terms(charged, 0, completion, None)


def _price(job: Any) -> ModelPrice:
    """The price fixed at Authorize, from the job's row."""
    return ModelPrice(
        parameters=0,
        prompt_per_1k=int(job.prompt_price_per_1k or 0),
        completion_per_1k=int(job.completion_price_per_1k or 0),
    )


def far_below_proof(job: Any, multiplier: float) -> bool | None:
    """True if the client countersigned a decode speed far below what the node proved,
    False if not, None when the job says nothing (too short, no report, unproven)."""
    if job.usage_reported_at is None or multiplier <= 1.0:
        return None
    tokens, stream_ms = int(job.client_completion_tokens), int(job.client_stream_ms)
    completion_price = int(job.completion_price_per_1k or 0)
    if tokens < SPEED_SAMPLE_TOKENS or stream_ms <= 0 or completion_price <= 0:
        return None
    reference_tps = 1_000_000 / completion_price
    return tokens * 1000 / stream_ms < SLOW_SHARE * reference_tps


def charged_tokens(job: Any) -> tuple[int, int] | None:
    """The (prompt, completion) tokens a CHARGED job's charge is for, by the terms it was
    settled on: the node's receipt (with the client's count when it came), or the client's
    countersignature alone. None for a job not charged."""
    if job.status != JobStatus.CHARGED:
        return None
    # The receipt is there when the node's duration is (record_node_claim writes both).
    settled_on = terms_for(job, token_slack=0) if job.node_duration_ms is not None else None
    terms = settled_on or countersigned_terms(job)
    return terms.prompt_tokens, terms.completion_tokens

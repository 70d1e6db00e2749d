"""Validation of the proof-of-hardware requests, field by field (INVALID_ARGUMENT, never INTERNAL).

Structural checks only: whether a root, a row or a path is *right* is the
proof's business (FAILED_PRECONDITION, troop_coordinator.proof). Openings are
checked against the challenge's shape, so they need it (`check_openings_shape`).
"""

from __future__ import annotations

from collections.abc import Sequence

from troop_common.hardware_proof import PRECISIONS
from troop_common.merkle import HASH_BYTES
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.challenge_store import Challenge
from troop_coordinator.validation import Violations

MAX_CHALLENGE_ID = 64
MAX_OPENINGS = 64
MAX_PATH = 40


def check_ids(check: Violations, node_id: str, challenge_id: str) -> None:
    check.node_id("node_id", node_id)
    if not challenge_id or len(challenge_id) > MAX_CHALLENGE_ID:
        check.add("challenge_id", f"required, from GetChallenge (at most {MAX_CHALLENGE_ID})")


def check_commit(request: pb.CommitProofRequest) -> None:
    check = Violations()
    check_ids(check, request.node_id, request.challenge_id)
    if len(request.merkle_root) != HASH_BYTES:
        check.add("merkle_root", f"exactly {HASH_BYTES} bytes (a SHA-256 root)")
    if request.precision not in PRECISIONS:
        check.add("precision", f"one of {', '.join(PRECISIONS)}")
    check.raise_if_any()


def check_verify(request: pb.VerifyProofRequest) -> None:
    """What can be checked before the challenge is looked up."""
    check = Violations()
    check_ids(check, request.node_id, request.challenge_id)
    if not request.openings:
        check.add("openings", "required: the rows CommitProof named")
    elif len(request.openings) > MAX_OPENINGS:
        check.add("openings", f"at most {MAX_OPENINGS}")
    else:
        for i, opening in enumerate(request.openings):
            _check_path(check, f"openings[{i}].path", opening.path)
    check.raise_if_any()


def _check_path(check: Violations, field: str, path: Sequence[bytes]) -> None:
    if len(path) > MAX_PATH:
        check.add(field, f"at most {MAX_PATH} hashes")
    elif any(len(h) != HASH_BYTES for h in path):
        check.add(field, f"each hash exactly {HASH_BYTES} bytes")


def check_openings_shape(request: pb.VerifyProofRequest, challenge: Challenge) -> None:
    """Each opening's row and length against the challenge's shape."""
    check = Violations()
    for i, opening in enumerate(request.openings):
        if opening.row >= challenge.rows:
            check.add(f"openings[{i}].row", f"below the challenge's rows ({challenge.rows})")
        if len(opening.values) != challenge.cols * 4:
            check.add(
                f"openings[{i}].values",
                f"cols × 4 = {challenge.cols * 4} bytes (little-endian float32)",
            )
    check.raise_if_any()

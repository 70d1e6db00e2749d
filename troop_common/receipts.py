"""Job receipts: what a worker claims it did, signed with its Ed25519 node key.

The receipt travels serialized, next to its signature, so the coordinator
verifies exactly the bytes it then parses (no canonical-encoding pitfalls).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.keys import Identity, verify_ed25519
from troop_common.proto import coordinator_pb2


def sign_receipt(
    node: Identity, receipt: coordinator_pb2.JobReceipt
) -> coordinator_pb2.SubmitReceiptRequest:
    data = receipt.SerializeToString(deterministic=True)
    return coordinator_pb2.SubmitReceiptRequest(receipt=data, signature=node.sign(data))


def parse_receipt(request: coordinator_pb2.SubmitReceiptRequest) -> coordinator_pb2.JobReceipt:
    """The receipt inside a request, unverified; InvalidArgument if malformed."""
    violations = []
    if not request.receipt:
        violations.append(FieldViolation("receipt", "required"))
    if len(request.signature) != 64:
        violations.append(FieldViolation("signature", "must be a 64-byte Ed25519 signature"))
    receipt = coordinator_pb2.JobReceipt()
    if request.receipt:
        try:
            receipt.ParseFromString(request.receipt)
        except DecodeError:
            violations.append(FieldViolation("receipt", "not a serialized JobReceipt"))
    if not violations:
        if not receipt.job_id:
            violations.append(FieldViolation("receipt.job_id", "required"))
        if not receipt.node_id:
            violations.append(FieldViolation("receipt.node_id", "required"))
        if receipt.outcome == coordinator_pb2.JOB_OUTCOME_UNSPECIFIED:
            violations.append(FieldViolation("receipt.outcome", "required"))
    if violations:
        raise InvalidArgument(violations)
    return receipt


def verify_receipt_signature(
    request: coordinator_pb2.SubmitReceiptRequest, node_public_key_hex: str
) -> None:
    """SignatureInvalid unless the node key signed the receipt bytes."""
    verify_ed25519(node_public_key_hex, request.signature, request.receipt)

"""Print the worked examples of docs/protocol.md ("Worked examples of every signature").

Every value comes from Troop's own signing code and fixed inputs (Ed25519 signatures are
deterministic), so a client in another language can check its own code against them;
tests/common/test_protocol_examples.py verifies the values printed in the docs.

    python tools/protocol_examples.py
"""

from __future__ import annotations

import base64

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from troop_common.endpoint_proof import sign_endpoint
from troop_common.evidence import (
    TokenEvidence,
    build_evidence,
    evidence_sha256,
    messages_sha256,
    sign_evidence,
)
from troop_common.keys import Identity, private_pem
from troop_common.node_proof import sign_node_proof
from troop_common.presentation import sign_presentation
from troop_common.proto import common_pb2, coordinator_pb2
from troop_common.receipts import sign_receipt

USER_SEED = bytes(range(32))
NODE_SEED = bytes(range(32, 64))
JOB_ID = "9f2b6c1d4e8a47b3a5c0d2e4f6a8b0c1"
NODE_ID = "node-3b6a27bcceb6"
NONCE = "00112233445566778899aabbccddeeff"
ENDPOINT = "203.0.113.7:50052"
ENDPOINT_NONCE = "ffeeddccbbaa99887766554433221100"
MODEL = "smollm2-135m-instruct"
EVIDENCE_MESSAGES = [("system", "You are brief."), ("user", "Say hi")]
EVIDENCE_TOKENS = [
    TokenEvidence(b"Hi", -0.25, 13665),
    TokenEvidence(b"!", -1.5),
    TokenEvidence(b"", -0.0625, 2),  # end of sequence
]
ASSERTION_CLAIMS = {
    "sub": "",  # the user's public key, filled in below
    "aud": "troop-coordinator",
    "iat": 1767225600,  # 2026-01-01T00:00:00Z
    "exp": 1767225660,
    "jti": "dHJvb3AtZXhhbXBsZS1qdGk",
}


def identity(seed: bytes) -> Identity:
    return Identity(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def receipt(user: Identity) -> coordinator_pb2.JobReceipt:
    return coordinator_pb2.JobReceipt(
        job_id=JOB_ID,
        node_id=NODE_ID,
        outcome=coordinator_pb2.JOB_OUTCOME_COMPLETED,
        duration_ms=1830,
        usage=common_pb2.Usage(prompt_tokens=44, completion_tokens=79, total_tokens=123),
        presentation=bytes.fromhex(sign_presentation(user, JOB_ID, NODE_ID, NONCE)),
        client_nonce=NONCE,
    )


def examples() -> dict[str, str]:
    """Each documented name and its value."""
    user, node = identity(USER_SEED), identity(NODE_SEED)
    submitted = sign_receipt(node, receipt(user))
    claims = {**ASSERTION_CLAIMS, "sub": user.public_key_hex}
    evidence = build_evidence(
        job_id=JOB_ID,
        node_id=NODE_ID,
        model=MODEL,
        messages=EVIDENCE_MESSAGES,
        tokens=EVIDENCE_TOKENS,
    )
    return {
        "user private key": private_pem(user.private_key).decode().strip(),
        "user public key": user.public_key_hex,
        "node public key": node.public_key_hex,
        "job_id": JOB_ID,
        "node_id": NODE_ID,
        "x-troop-client-nonce": NONCE,
        "x-troop-presentation": sign_presentation(user, JOB_ID, NODE_ID, NONCE),
        "x-troop-node-proof": sign_node_proof(node, JOB_ID, NONCE),
        "ProveEndpoint endpoint": ENDPOINT,
        "ProveEndpoint nonce": ENDPOINT_NONCE,
        "ProveEndpoint signature": sign_endpoint(node, ENDPOINT, ENDPOINT_NONCE),
        "assertion": jwt.encode(claims, user.private_key, algorithm="EdDSA"),
        "SubmitReceipt receipt (hex)": submitted.receipt.hex(),
        "SubmitReceipt receipt (base64, JSON)": base64.b64encode(submitted.receipt).decode(),
        "SubmitReceipt signature (hex)": submitted.signature.hex(),
        "SubmitReceipt signature (base64, JSON)": base64.b64encode(submitted.signature).decode(),
        "OutputEvidence messages_sha256 (hex)": messages_sha256(EVIDENCE_MESSAGES).hex(),
        "OutputEvidence (hex)": evidence.hex(),
        "evidence_signature (hex)": sign_evidence(node, evidence).hex(),
        "evidence_sha256 (hex)": evidence_sha256(evidence).hex(),
    }


def markdown() -> str:
    lines = []
    for name, value in examples().items():
        if "\n" in value:
            lines.append(f"{name}:\n{value}")
        else:
            lines.append(f"{name}: {value}")
    return "```text\n" + "\n".join(lines) + "\n```"


if __name__ == "__main__":
    print(markdown())

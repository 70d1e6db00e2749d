"""A worker proves to the client that it is the node the ticket names.

The client sends a fresh nonce (`x-troop-client-nonce`); the worker answers in
its initial metadata (`x-troop-node-proof`) with an Ed25519 signature by its
node key over the job id, the nonce and its own public key. The client checks
it against the node key the coordinator returned with the ticket before it
hands a single token to its caller, and refuses the stream otherwise: no
silent downgrade to an unauthenticated worker.
"""

from __future__ import annotations

import re
import secrets

from troop_common.errors import AuthError, NodeProofInvalid
from troop_common.keys import Identity, verify_ed25519

NONCE_HEADER = "x-troop-client-nonce"
PROOF_HEADER = "x-troop-node-proof"
_NONCE = re.compile(r"^[0-9a-f]{32,128}$")


def new_nonce() -> str:
    return secrets.token_hex(16)


def is_nonce(value: str) -> bool:
    return bool(_NONCE.match(value))


def _message(job_id: str, nonce: str, node_public_key: str) -> bytes:
    return f"troop-node-proof/v1\n{job_id}\n{nonce}\n{node_public_key}".encode()


def sign_node_proof(node: Identity, job_id: str, nonce: str) -> str:
    return node.sign(_message(job_id, nonce, node.public_key_hex)).hex()


def verify_node_proof(node_public_key: str, job_id: str, nonce: str, proof: str | None) -> None:
    """NodeProofInvalid unless `proof` is the node key's signature for this job and nonce."""
    if not proof:
        raise NodeProofInvalid("the worker sent no proof that it is the ticket's node")
    try:
        signature = bytes.fromhex(proof)
        verify_ed25519(node_public_key, signature, _message(job_id, nonce, node_public_key))
    except (ValueError, AuthError) as exc:
        raise NodeProofInvalid("the worker is not the node the ticket names") from exc

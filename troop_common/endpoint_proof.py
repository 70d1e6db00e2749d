"""A node proves that its key answers at the endpoint it advertises.

The coordinator dials the advertised `host:port` and calls
`InferenceService.ProveEndpoint{nonce, endpoint}`; the worker answers with its
node public key and an Ed25519 signature by it over

    "troop-endpoint/v1\\n" + endpoint + "\\n" + nonce + "\\n" + node_public_key

Only a node whose key signed a fresh nonce over a connection to that very
endpoint is listed, so a stranger cannot list nodes at someone else's address
(it would need that worker's key) nor at an address where nothing answers.
"""

from __future__ import annotations

from troop_common.keys import Identity, verify_ed25519


def endpoint_message(endpoint: str, nonce: str, node_public_key: str) -> bytes:
    return f"troop-endpoint/v1\n{endpoint}\n{nonce}\n{node_public_key}".encode()


def sign_endpoint(node: Identity, endpoint: str, nonce: str) -> str:
    """The hex signature a worker answers with."""
    return node.sign(endpoint_message(endpoint, nonce, node.public_key_hex)).hex()


def verify_endpoint(node_public_key: str, endpoint: str, nonce: str, signature_hex: str) -> None:
    """AuthError unless the node key signed this endpoint and nonce (ValueError: not hex)."""
    verify_ed25519(
        node_public_key,
        bytes.fromhex(signature_hex),
        endpoint_message(endpoint, nonce, node_public_key),
    )

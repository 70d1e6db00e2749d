"""docs/protocol.md's worked examples hold: every documented signature verifies with the check
the servers run, under the documented key, and re-signing the documented inputs gives exactly
the documented value (a client in another language checks its code against these)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from troop_common.assertions import verify_assertion
from troop_common.endpoint_proof import verify_endpoint
from troop_common.errors import NodeProofInvalid, PresentationInvalid, SignatureInvalid
from troop_common.evidence import (
    TokenEvidence,
    evidence_sha256,
    messages_sha256,
    open_evidence,
    tokens_of,
)
from troop_common.keys import load_ed25519_private, public_key_hex
from troop_common.node_proof import verify_node_proof
from troop_common.presentation import verify_presentation
from troop_common.proto import coordinator_pb2
from troop_common.receipts import verify_receipt_signature

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"


def _generator():  # tools/ is scripts, not a package
    spec = importlib.util.spec_from_file_location(
        "protocol_examples", ROOT / "tools" / "protocol_examples.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented() -> dict[str, str]:
    section = DOC.read_text().split("## Worked examples of every signature", 1)[1]
    block = re.search(r"```text\n(.*?)\n```", section, re.S)
    assert block, "the worked examples' block is missing"
    values: dict[str, str] = {}
    lines = iter(block.group(1).splitlines())
    for line in lines:
        name, _, value = line.partition(":")
        if value.strip():
            values[name] = value.strip()
        else:  # a multi-line value (the PEM) follows until its END line
            body = []
            for more in lines:
                body.append(more)
                if more.startswith("-----END"):
                    break
            values[name] = "\n".join(body)
    return values


@pytest.fixture(scope="module")
def doc() -> dict[str, str]:
    return _documented()


def test_the_documented_private_key_is_a_pkcs8_pem_of_the_documented_public_key(
    doc: dict[str, str], tmp_path: Path
) -> None:
    pem = tmp_path / "identity.key"
    pem.write_text(doc["user private key"] + "\n")
    key = load_ed25519_private(pem)
    assert public_key_hex(key.public_key()) == doc["user public key"]


def test_the_documented_signatures_verify_with_the_servers_checks(doc: dict[str, str]) -> None:
    user, node = doc["user public key"], doc["node public key"]
    job, node_id, nonce = doc["job_id"], doc["node_id"], doc["x-troop-client-nonce"]
    verify_presentation(user, job, node_id, nonce, bytes.fromhex(doc["x-troop-presentation"]))
    verify_node_proof(node, job, nonce, doc["x-troop-node-proof"])
    verify_endpoint(
        node,
        doc["ProveEndpoint endpoint"],
        doc["ProveEndpoint nonce"],
        doc["ProveEndpoint signature"],
    )
    assertion = verify_assertion(doc["assertion"], "troop-coordinator", now=1767225600)
    assert assertion.subject == user
    request = coordinator_pb2.SubmitReceiptRequest(
        receipt=base64.b64decode(doc["SubmitReceipt receipt (base64, JSON)"]),
        signature=base64.b64decode(doc["SubmitReceipt signature (base64, JSON)"]),
    )
    assert request.receipt.hex() == doc["SubmitReceipt receipt (hex)"]
    assert request.signature.hex() == doc["SubmitReceipt signature (hex)"]
    verify_receipt_signature(request, node)
    receipt = coordinator_pb2.JobReceipt.FromString(request.receipt)
    assert (receipt.job_id, receipt.node_id, receipt.client_nonce) == (job, node_id, nonce)
    assert receipt.presentation.hex() == doc["x-troop-presentation"]


def test_the_documented_output_evidence_verifies_and_reads_as_the_section_says(
    doc: dict[str, str],
) -> None:
    evidence = bytes.fromhex(doc["OutputEvidence (hex)"])
    signature = bytes.fromhex(doc["evidence_signature (hex)"])
    parsed = open_evidence(evidence, signature, doc["node public key"])
    assert (parsed.job_id, parsed.node_id, parsed.model) == (
        doc["job_id"],
        doc["node_id"],
        "smollm2-135m-instruct",
    )
    # The digest by hand, as the section spells it: role, "\n", byte length, "\n", content.
    by_hand = hashlib.sha256(b"system\n14\nYou are brief.user\n6\nSay hi").hexdigest()
    assert parsed.messages_sha256.hex() == doc["OutputEvidence messages_sha256 (hex)"] == by_hand
    assert messages_sha256([("system", "You are brief."), ("user", "Say hi")]).hex() == by_hand
    assert tokens_of(parsed) == [
        TokenEvidence(b"Hi", -0.25, 13665),
        TokenEvidence(b"!", -1.5),
        TokenEvidence(b"", -0.0625, 2),
    ]
    assert evidence_sha256(evidence).hex() == doc["evidence_sha256 (hex)"]
    assert hashlib.sha256(evidence).hexdigest() == doc["evidence_sha256 (hex)"]
    with pytest.raises(SignatureInvalid):  # another node's key did not sign it
        open_evidence(evidence, signature, doc["user public key"])


def test_a_signature_over_other_inputs_is_refused(doc: dict[str, str]) -> None:
    """The examples are not vacuous: the same checks refuse them for another job."""
    with pytest.raises(NodeProofInvalid):
        verify_node_proof(
            doc["node public key"],
            "0" * 32,
            doc["x-troop-client-nonce"],
            doc["x-troop-node-proof"],
        )
    with pytest.raises(PresentationInvalid):
        verify_presentation(
            doc["user public key"],
            doc["job_id"],
            "node-other",
            doc["x-troop-client-nonce"],
            bytes.fromhex(doc["x-troop-presentation"]),
        )


def test_signing_the_documented_inputs_again_gives_the_documented_values(
    doc: dict[str, str],
) -> None:
    """Ed25519 is deterministic: the docs are exactly what the code makes today."""
    assert _generator().examples() == doc

"""The coordinator acts on verifiers' verdicts (docs/adr/0053): every refusal, the held
pay of a node that failed a check and its release, the bar and its refunds, routing
around a failed node, pinned Authorize. Each test runs on SQLite and on PostgreSQL (the
`settings` fixture): both settlement implementations hold the pay."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from tests.coordinator.test_coordinator_settlement import STARTER, expected_charge
from tests.verification.verdicts import TOKENS, node_evidence, signed_verdict, verdict_for
from troop_common.errors import (
    AuthError,
    FailedPrecondition,
    InvalidArgument,
    NodeUnavailable,
    NotFound,
    PermissionDenied,
)
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

if TYPE_CHECKING:
    from conftest import Launch, Network, Node

MODEL = "smollm2-135m-instruct"
OTHER = "smollm2-360m-instruct"
VERIFIER = Identity.generate()
HOLD_S = 3600.0


@pytest.fixture
def settings(settings: CoordinatorSettings) -> CoordinatorSettings:
    return replace(
        settings,
        verifier_keys=(VERIFIER.public_key_hex,),
        verification_hold_s=HOLD_S,
        verification_bar_after=2,
    )


async def settled_job(
    network: Network, node: Node, user, *, evidence: bool = True, pinned: bool = False
) -> tuple[pb.AuthorizeResponse, int]:
    """A job run on `node` (pinned when asked), its receipt (vouching for the node's
    evidence) and its countersignature in: settled. (The grant, its charge.)"""
    job = await user.authorize(
        MODEL, max_tokens=64, max_prompt_tokens=200, node_id=node.node_id if pinned else ""
    )
    assert job.node_id == node.node_id
    digest = b""
    if evidence:
        data, _ = node_evidence(node.identity, job.job_id, node.node_id, MODEL)
        digest = hashlib.sha256(data).digest()
    receipt = node.receipt(job, user)
    if digest:
        from tests.conftest import signed_receipt

        receipt = signed_receipt(
            node.identity, job.job_id, node.node_id, user.identity, evidence_sha256=digest
        )
    await network.client(node.identity).submit_receipt(receipt)
    settled = await user.report_usage(job.job_id, completion_tokens=5, stream_ms=700)
    assert settled.kind == pb.SETTLEMENT_KIND_CHARGED
    return job, expected_charge(job, 10, 5)


async def submit(network: Network, request: pb.SubmitVerdictRequest) -> pb.SubmitVerdictResponse:
    return await network.client().submit_verdict(request)


async def audit_ok(coordinator: Coordinator) -> None:
    report = await coordinator.ledger.audit()
    assert report.ok, report


async def test_every_malformed_verdict_is_refused_naming_its_field(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job, _ = await settled_job(network, node, user)
    args = (VERIFIER, node.identity, job.job_id, node.node_id, MODEL)
    bad = pb.SubmitVerdictRequest(verdict=b"\xff\xff", signature=b"\0" * 64)
    with pytest.raises(InvalidArgument) as caught:
        await submit(network, bad)
    assert [v.field for v in caught.value.violations] == ["verdict"]
    cases = {
        "verdict.outcome": {"outcome": pb.VERDICT_OUTCOME_UNSPECIFIED},
        "verdict.reason": {"reason": "x" * 201},
        "verdict.positions_failed": {"positions_checked": 2, "positions_failed": 3},
    }
    for field, fields in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            await submit(network, verdict_for(*args, **fields))
        assert [v.field for v in caught.value.violations] == [field]
    short = verdict_for(*args)
    short.signature = short.signature[:10]
    with pytest.raises(InvalidArgument) as caught:
        await submit(network, short)
    assert [v.field for v in caught.value.violations] == ["signature"]
    with pytest.raises(InvalidArgument) as caught:
        await submit(network, verdict_for(VERIFIER, node.identity, "", "", ""))
    assert {v.field for v in caught.value.violations} == {
        "verdict.job_id",
        "verdict.node_id",
        "verdict.model",
    }


async def test_verdicts_from_untrusted_keys_or_about_the_wrong_job_are_refused(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    other = await network.node()
    user = network.user()
    job, _ = await settled_job(network, node, user, pinned=True)
    args = (node.identity, job.job_id, node.node_id, MODEL)
    stranger = Identity.generate()
    with pytest.raises(AuthError, match="not one this coordinator trusts"):
        await submit(network, verdict_for(stranger, *args))
    with pytest.raises(AuthError, match="not signed by its verifier"):
        await submit(network, verdict_for(VERIFIER, *args, signer=stranger))
    with pytest.raises(NotFound):
        await submit(network, verdict_for(VERIFIER, node.identity, "nojob", node.node_id, MODEL))
    with pytest.raises(FailedPrecondition):  # the job ran elsewhere
        await submit(
            network, verdict_for(VERIFIER, other.identity, job.job_id, other.node_id, MODEL)
        )
    with pytest.raises(FailedPrecondition):  # for another model
        await submit(network, verdict_for(VERIFIER, node.identity, job.job_id, node.node_id, OTHER))
    # Evidence the node's key did not sign.
    with pytest.raises(AuthError, match="evidence is not signed"):
        await submit(network, verdict_for(VERIFIER, stranger, job.job_id, node.node_id, MODEL))
    # The node's evidence about another job; for this job, but not what its receipt
    # vouched for.
    for about, tokens, refused in (
        ("another-job", TOKENS, "another job"),
        (job.job_id, (), "vouched"),
    ):
        data, signature = node_evidence(node.identity, about, node.node_id, MODEL, tokens=tokens)
        verdict = signed_verdict(VERIFIER, job_id=job.job_id, node_id=node.node_id, model=MODEL,
                                 evidence=data, evidence_signature=signature)  # fmt: skip
        with pytest.raises(FailedPrecondition, match=refused):
            await submit(network, verdict)
    # Nothing of it changed the node.
    (listed,) = [n for n in (await user.list_nodes(MODEL)).nodes if n.node_id == node.node_id]
    assert listed.verification.checks_failed == 0


async def test_a_node_that_sent_no_evidence_is_failed_on_its_own_receipt(
    coordinator: Coordinator, network: Network
) -> None:
    """A cheater that leaves its evidence out of the stream cannot escape: a FAILED
    verdict without evidence counts when the node's receipt vouched for none — and only
    then, and never for a PASSED one."""
    node = await network.node()
    user = network.user()
    silent, _ = await settled_job(network, node, user, evidence=False)
    vouched, _ = await settled_job(network, node, user)
    empty = {"evidence": b"", "evidence_signature": b""}
    with pytest.raises(InvalidArgument) as caught:
        await submit(
            network,
            signed_verdict(VERIFIER, job_id=silent.job_id, node_id=node.node_id, model=MODEL,
                           outcome=pb.VERDICT_OUTCOME_PASSED, **empty),
        )  # fmt: skip
    assert [v.field for v in caught.value.violations] == ["verdict.evidence"]
    with pytest.raises(FailedPrecondition, match="vouched for evidence"):
        await submit(
            network,
            signed_verdict(VERIFIER, job_id=vouched.job_id, node_id=node.node_id, model=MODEL,
                           **empty),
        )  # fmt: skip
    response = await submit(
        network,
        signed_verdict(VERIFIER, job_id=silent.job_id, node_id=node.node_id, model=MODEL,
                       reason="a finished job without output evidence its node signed", **empty),
    )  # fmt: skip
    assert response.verification.checks_failed == 1
    assert list(response.verification.failed_models) == [MODEL]
    await audit_ok(coordinator)


async def test_no_trusted_verifier_refuses_every_verdict(launch: Launch) -> None:
    _, network = await launch(verifier_keys=())
    node = await network.node()
    job, _ = await settled_job(network, node, network.user())
    with pytest.raises(AuthError):
        await submit(network, verdict_for(VERIFIER, node.identity, job.job_id, node.node_id, MODEL))


async def test_a_failed_check_holds_the_nodes_pay_until_the_hold_ends(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    owner = network.client(node.owner)
    first, first_charge = await settled_job(network, node, user)
    assert (await owner.get_balance()).balance_millicredits == first_charge

    response = await submit(
        network, verdict_for(VERIFIER, node.identity, first.job_id, node.node_id, MODEL)
    )
    assert not response.duplicate
    record = response.verification
    assert (record.checks_failed, record.checks_passed, record.barred) == (1, 0, False)
    assert list(record.failed_models) == [MODEL] and record.HasField("held_until")
    assert record.HasField("last_checked")
    # The same verdict again changes nothing.
    again = await submit(
        network, verdict_for(VERIFIER, node.identity, first.job_id, node.node_id, MODEL)
    )
    assert again.duplicate and again.verification.checks_failed == 1
    await audit_ok(coordinator)

    # Its next settled job (pinned: the model is not routed to it) pays its owner nothing yet.
    second, charge = await settled_job(network, node, user, pinned=True)
    assert charge > 0
    assert (await owner.get_balance()).balance_millicredits == first_charge
    assert (await user.get_balance()).balance_millicredits == STARTER - first_charge - charge
    assert (await coordinator.ledger.audit()).held_millicredits == charge
    await audit_ok(coordinator)
    # Nothing is released while the hold lasts.
    now = datetime.now(UTC)
    assert await coordinator.ledger.settle_held(now) == {"released": 0, "refunded": 0}

    later = now + timedelta(seconds=HOLD_S + 1)
    assert await coordinator.ledger.settle_held(later) == {"released": 1, "refunded": 0}
    assert (await owner.get_balance()).balance_millicredits == first_charge + charge
    earned = [
        t for t in (await owner.list_transactions()).transactions if t.job_id == second.job_id
    ]
    assert [(t.kind, t.amount_millicredits) for t in earned] == [(pb.TRANSACTION_KIND_EARN, charge)]
    assert await coordinator.ledger.settle_held(later) == {"released": 0, "refunded": 0}
    report = await coordinator.ledger.audit()
    assert report.ok and report.held_millicredits == 0


async def test_failures_up_to_the_bar_bar_the_node_and_refund_its_held_pay(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    owner = network.client(node.owner)
    first, first_charge = await settled_job(network, node, user)
    await submit(network, verdict_for(VERIFIER, node.identity, first.job_id, node.node_id, MODEL))
    second, charge = await settled_job(network, node, user, pinned=True)
    await audit_ok(coordinator)
    assert (await user.get_balance()).balance_millicredits == STARTER - first_charge - charge

    barred = await submit(
        network, verdict_for(VERIFIER, node.identity, second.job_id, node.node_id, MODEL)
    )
    assert barred.verification.barred and barred.verification.checks_failed == 2
    # The held pay went back to the user who paid it; the owner keeps what was released.
    assert (await user.get_balance()).balance_millicredits == STARTER - first_charge
    refunds = [
        (t.kind, t.amount_millicredits)
        for t in (await user.list_transactions()).transactions
        if t.job_id == second.job_id and t.kind == pb.TRANSACTION_KIND_REFUND
    ]
    assert refunds == [(pb.TRANSACTION_KIND_REFUND, charge)]
    assert (await owner.get_balance()).balance_millicredits == first_charge
    report = await coordinator.ledger.audit()
    assert report.ok and report.held_millicredits == 0, report

    # Refused at heartbeat, never listed, never routed, not even pinned.
    with pytest.raises(PermissionDenied, match="barred"):
        await node.heartbeat()
    assert node.node_id not in [n.node_id for n in (await user.list_nodes()).nodes]
    with pytest.raises(NodeUnavailable):
        await user.authorize(MODEL, node_id=node.node_id)
    with pytest.raises(NodeUnavailable):
        await user.authorize(MODEL)
    # The sweep finds nothing more to do; a later hold's end releases nothing to it.
    later = datetime.now(UTC) + timedelta(seconds=HOLD_S + 1)
    assert await coordinator.ledger.settle_held(later) == {"released": 0, "refunded": 0}
    await audit_ok(coordinator)


async def test_a_barred_nodes_job_settling_later_goes_back_to_its_user(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    first, _ = await settled_job(network, node, user)
    second, _ = await settled_job(network, node, user)
    third = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200, node_id=node.node_id)
    for job in (first, second):
        await submit(network, verdict_for(VERIFIER, node.identity, job.job_id, node.node_id, MODEL))
    before = (await user.get_balance()).balance_millicredits
    # Its open job settles after the bar: the pay is held, then returned by the sweep.
    await network.client(node.identity).submit_receipt(node.receipt(third, user))
    await user.report_usage(third.job_id, completion_tokens=5, stream_ms=700)
    await audit_ok(coordinator)
    assert await coordinator.ledger.settle_held(datetime.now(UTC)) == {
        "released": 0,
        "refunded": 1,
    }
    assert (await user.get_balance()).balance_millicredits == before + third.reserved_millicredits
    await audit_ok(coordinator)


async def test_authorize_skips_a_failed_node_for_that_model_only(
    coordinator: Coordinator, network: Network
) -> None:
    failed = await network.node(models=[MODEL, OTHER])
    user = network.user()
    job, _ = await settled_job(network, failed, user)
    healthy = await network.node(models=[MODEL])
    await submit(network, verdict_for(VERIFIER, failed.identity, job.job_id, failed.node_id, MODEL))

    for _ in range(8):
        assert (await user.authorize(MODEL)).node_id == healthy.node_id
    assert (await user.authorize(OTHER)).node_id == failed.node_id
    # Still there for whoever pins it, and its record is listed.
    assert (await user.authorize(MODEL, node_id=failed.node_id)).node_id == failed.node_id
    listed = {n.node_id: n for n in (await user.list_nodes()).nodes}
    assert list(listed[failed.node_id].verification.failed_models) == [MODEL]
    assert listed[healthy.node_id].verification.checks_failed == 0
    assert failed.node_id not in [n.node_id for n in (await user.list_nodes(MODEL)).nodes]
    # Its next beat keeps it off the model (the record read from its row).
    await failed.heartbeat(models=[MODEL, OTHER])
    for _ in range(4):
        assert (await user.authorize(MODEL)).node_id == healthy.node_id
    with pytest.raises(NodeUnavailable):
        await user.authorize(MODEL, node_id="node-unknown")
    with pytest.raises(NodeUnavailable):
        await user.authorize(OTHER, node_id=healthy.node_id)  # it does not serve OTHER


async def test_a_passed_check_is_counted(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    user = network.user()
    job, _ = await settled_job(network, node, user, evidence=False)
    response = await submit(
        network,
        verdict_for(
            VERIFIER,
            node.identity,
            job.job_id,
            node.node_id,
            MODEL,
            outcome=pb.VERDICT_OUTCOME_PASSED,
        ),
    )
    record = response.verification
    assert (record.checks_passed, record.checks_failed, list(record.failed_models)) == (1, 0, [])
    assert not record.HasField("held_until") and record.HasField("last_checked")
    (listed,) = (await user.list_nodes(MODEL)).nodes
    assert listed.verification.checks_passed == 1
    assert (await user.authorize(MODEL)).node_id == node.node_id


async def test_troop_nodes_shows_each_nodes_checks(
    coordinator: Coordinator, network: Network, tmp_path, capsys, monkeypatch
) -> None:
    from troop_cli.main import build_parser

    node = await network.node()
    job, _ = await settled_job(network, node, network.user())
    await submit(network, verdict_for(VERIFIER, node.identity, job.job_id, node.node_id, MODEL))
    monkeypatch.setenv("TROOP_IDENTITY", str(tmp_path / "identity.key"))
    args = build_parser("nodes").parse_args(["nodes", "--coordinator", coordinator.address])
    assert await args.handler(args) == 0
    out = capsys.readouterr().out
    assert "CHECKS OK/FAILED" in out and "LAST CHECKED (UTC)" in out
    assert f"0/1 failed: {MODEL}" in out and "never" not in out

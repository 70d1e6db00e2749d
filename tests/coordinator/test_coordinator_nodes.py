"""Nodes: identity binding, liveness by TTL, model counts, proof of hardware."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from troop_common import hardware_proof
from troop_common.errors import FailedPrecondition, NotFound, PermissionDenied
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.proof import ProofShape
from troop_worker.hardware_proof import openings
from troop_worker.proof_compute import compute

if TYPE_CHECKING:
    from conftest import Launch, Network

MODEL = "smollm2-135m-instruct"


async def test_heartbeat_for_a_node_id_bound_to_another_key_is_denied(network: Network) -> None:
    node = await network.node()
    impostor = network.client(Identity.generate())

    with pytest.raises(PermissionDenied) as caught:
        await impostor.heartbeat(
            pb.HeartbeatRequest(
                node_id=node.node_id,
                endpoint="10.0.0.66:50099",
                models=[MODEL],
                owner_public_key=impostor.identity.public_key_hex,
            )
        )

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    listed = (await impostor.list_nodes()).nodes
    assert [(n.node_id, n.endpoint) for n in listed] == [(node.node_id, "127.0.0.1:50099")]
    assert listed[0].node_public_key == node.identity.public_key_hex
    await node.heartbeat()  # the rightful key still works


async def test_binding_survives_a_coordinator_restart(
    coordinator: Coordinator, network: Network, launch: Launch
) -> None:
    node = await network.node()
    _, fresh = await launch()  # a new process on the same database: empty registry
    impostor = fresh.client(Identity.generate())
    with pytest.raises(PermissionDenied):
        await impostor.heartbeat(
            pb.HeartbeatRequest(
                node_id=node.node_id,
                endpoint="10.0.0.66:1",
                models=[MODEL],
                owner_public_key=impostor.identity.public_key_hex,
            )
        )


async def test_silent_node_disappears_after_ttl(launch: Launch, eventually) -> None:
    # Long enough that both are still live when first listed on a loaded machine; the wait
    # below is bounded far above it.
    _, net = await launch(node_ttl_s=2)
    await net.node(node_id="quiet")
    chatty = await net.node(node_id="chatty")
    observer = net.user()
    assert {n.node_id for n in (await observer.list_nodes()).nodes} == {"quiet", "chatty"}

    async def only_the_chatty_one_listed() -> bool:
        await chatty.heartbeat()  # stays alive while the quiet one's TTL runs out
        return {n.node_id for n in (await observer.list_nodes()).nodes} == {"chatty"}

    await eventually(only_the_chatty_one_listed, timeout_s=30, interval_s=0.1)

    models = (await observer.list_models()).models
    assert [(m.id, m.node_count) for m in models] == [(MODEL, 1)]


async def test_list_models_counts_nodes_and_list_nodes_filters(network: Network) -> None:
    await network.node(models=[MODEL, "llama-3-8b"])
    await network.node(models=[MODEL])
    observer = network.user()

    models = {m.id: m.node_count for m in (await observer.list_models()).models}
    assert models == {MODEL: 2, "llama-3-8b": 1}
    assert len((await observer.list_nodes(model="llama-3-8b")).nodes) == 1
    assert len((await observer.list_nodes()).nodes) == 2
    node = (await observer.list_nodes(model="llama-3-8b")).nodes[0]
    assert node.hardware.cpu_count == 2 and node.multiplier == 1.0
    assert node.last_seen.seconds > 0


async def _commit(node, challenge: pb.GetChallengeResponse, seed: int):
    product = compute(seed, challenge.rows, challenge.inner, challenge.cols, device="cpu")
    named = await node.client.commit_proof(
        pb.CommitProofRequest(
            node_id=node.node_id, challenge_id=challenge.challenge_id,
            merkle_root=product.tree.root, precision=product.precision, reported_ms=1,
        )
    )  # fmt: skip
    return product, named


async def test_right_proof_sets_multiplier(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    challenge = await node.client.get_challenge(node.node_id)
    assert (challenge.rows, challenge.inner, challenge.cols) == (2048, 2048, 2048)
    seed = (await node.client.start_challenge(node.node_id, challenge.challenge_id)).seed
    product, named = await _commit(node, challenge, seed)
    assert len(named.rows) == len(named.cols) == 48
    proof = await node.client.verify_proof(
        pb.VerifyProofRequest(
            node_id=node.node_id,
            challenge_id=challenge.challenge_id,
            openings=openings(product, list(named.rows)),
        )
    )
    assert proof.measured_ms >= 1 and proof.tier in ("cpu", "gpu-small", "gpu", "datacenter")
    assert (await node.heartbeat()).multiplier == pytest.approx(proof.multiplier)
    listed = (await network.user().list_nodes()).nodes
    assert listed[0].multiplier == pytest.approx(proof.multiplier)


async def test_wrong_proof_is_refused_and_challenge_used_up(network: Network) -> None:
    node = await network.node()
    challenge = await node.client.get_challenge(node.node_id)
    seed = (await node.client.start_challenge(node.node_id, challenge.challenge_id)).seed
    product, named = await _commit(node, challenge, seed)
    right = openings(product, list(named.rows))
    wrong = [pb.ProofOpening(row=o.row, values=o.values, path=list(o.path)) for o in right]
    wrong[0].values = bytes(len(wrong[0].values))
    request = pb.VerifyProofRequest(
        node_id=node.node_id, challenge_id=challenge.challenge_id, openings=wrong
    )

    with pytest.raises(FailedPrecondition) as caught:
        await node.client.verify_proof(request)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION

    del request.openings[:]
    request.openings.extend(right)
    with pytest.raises(FailedPrecondition):
        await node.client.verify_proof(request)
    assert (await node.heartbeat()).multiplier == 1.0


async def test_challenge_needs_a_known_node_and_its_key(network: Network) -> None:
    node = await network.node()
    with pytest.raises(NotFound):
        await node.client.get_challenge("never-seen")
    with pytest.raises(PermissionDenied):
        await network.client(Identity.generate()).get_challenge(node.node_id)


def test_speed_multiplier_and_tier_scales() -> None:
    reference = hardware_proof.reference_tflops(1500)
    assert reference == pytest.approx(0.0916, rel=1e-3)
    assert hardware_proof.tflops_for(4096, 4096, 4096, 1500) == pytest.approx(reference)
    assert hardware_proof.multiplier_for(reference, reference) == pytest.approx(1.0)
    assert hardware_proof.multiplier_for(1000.0, reference) == pytest.approx(10_917, rel=1e-3)
    assert hardware_proof.multiplier_for(1e9, reference) == 100_000.0
    assert hardware_proof.multiplier_for(0.0, reference) == 0.01
    tiers = [hardware_proof.tier_for(t) for t in (0.09, 1.0, 19.9, 20.0, 199.0, 200.0)]
    assert tiers == ["cpu", "gpu-small", "gpu-small", "gpu", "gpu", "datacenter"]


def test_inner_is_sized_from_the_last_speed_and_clamped() -> None:
    shape = ProofShape()
    assert shape.inner_for(None) == 2048
    # 2 s at 0.1 TFLOP/s over a 2048 × 2048 product: 2e11 / 8.4e6 ≈ 23,842.
    assert shape.inner_for(0.1) == 23_842
    assert shape.inner_for(1e-9) == 1024 and shape.inner_for(1e6) == 1 << 20


def test_tolerance_is_exact_for_fp32_and_looser_for_bf16() -> None:
    inner = 4096
    sigma = 24 * 64
    assert hardware_proof.check_entry(100.0, 100, inner, "fp32")
    assert not hardware_proof.check_entry(101.0, 100, inner, "fp32")
    assert hardware_proof.check_entry(100 + 0.01 * sigma, 100, inner, "bf16")
    assert not hardware_proof.check_entry(100 + 0.05 * sigma, 100, inner, "bf16")
    assert not hardware_proof.check_entry(float("nan"), 0, inner, "bf16")

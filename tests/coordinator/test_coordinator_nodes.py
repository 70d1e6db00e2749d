"""Nodes: identity binding, liveness by TTL, model counts, proof of hardware."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from troop_common import hardware_proof
from troop_common.errors import FailedPrecondition, NotFound, PermissionDenied
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator

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


async def test_silent_node_disappears_after_ttl(launch: Launch) -> None:
    _, net = await launch(node_ttl_s=0.5)
    quiet = await net.node(node_id="quiet")
    chatty = await net.node(node_id="chatty")
    observer = net.user()
    assert {n.node_id for n in (await observer.list_nodes()).nodes} == {"quiet", "chatty"}

    deadline = time.monotonic() + 5
    while True:
        await chatty.heartbeat()
        listed = {n.node_id for n in (await observer.list_nodes()).nodes}
        if listed == {"chatty"}:
            break
        assert time.monotonic() < deadline, f"{quiet.node_id} never expired: {listed}"
        await asyncio.sleep(0.1)

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


def _answer(challenge: pb.GetChallengeResponse) -> list[float]:
    a, b = hardware_proof.generate_matrices(challenge.seed, challenge.matrix_size)
    return hardware_proof.sample_product(a @ b, list(challenge.sample_indices))


async def test_right_proof_sets_multiplier(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    challenge = await node.client.get_challenge(node.node_id)
    assert challenge.matrix_size == 64 and len(challenge.sample_indices) == 8
    # Reference at 64: 1500 ms × (64/4096)³ ≈ 0.0057 ms; any real time clamps low.
    proof = await node.client.verify_proof(
        pb.VerifyProofRequest(
            node_id=node.node_id,
            challenge_id=challenge.challenge_id,
            samples=_answer(challenge),
            elapsed_ms=1,
        )
    )
    assert proof.multiplier == pytest.approx(0.1)
    assert (await node.heartbeat()).multiplier == pytest.approx(0.1)
    listed = (await network.user().list_nodes()).nodes
    assert listed[0].multiplier == pytest.approx(0.1)


async def test_wrong_proof_is_refused_and_challenge_used_up(network: Network) -> None:
    node = await network.node()
    challenge = await node.client.get_challenge(node.node_id)
    wrong = [x + 1.0 for x in _answer(challenge)]
    request = pb.VerifyProofRequest(
        node_id=node.node_id, challenge_id=challenge.challenge_id, samples=wrong, elapsed_ms=5
    )

    with pytest.raises(FailedPrecondition) as caught:
        await node.client.verify_proof(request)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION

    request.samples[:] = _answer(challenge)
    with pytest.raises(NotFound):
        await node.client.verify_proof(request)
    assert (await node.heartbeat()).multiplier == 1.0


async def test_challenge_needs_a_known_node_and_its_key(network: Network) -> None:
    node = await network.node()
    with pytest.raises(NotFound):
        await node.client.get_challenge("never-seen")
    with pytest.raises(PermissionDenied):
        await network.client(Identity.generate()).get_challenge(node.node_id)


def test_multiplier_scales_with_matrix_size_and_clamps() -> None:
    assert hardware_proof.multiplier_for(1500, 4096, 1500) == pytest.approx(1.0)
    assert hardware_proof.multiplier_for(750, 4096, 1500) == pytest.approx(2.0)
    assert hardware_proof.multiplier_for(1500 / 8, 2048, 1500) == pytest.approx(1.0)
    assert hardware_proof.multiplier_for(0.001, 4096, 1500) == 10.0
    assert hardware_proof.multiplier_for(10**9, 4096, 1500) == 0.1


def test_check_samples_tolerates_float32_and_rejects_guesses() -> None:
    n = 256
    a, b = hardware_proof.generate_matrices(42, n)
    indices = hardware_proof.choose_sample_indices(np.random.default_rng(1), n)
    right = hardware_proof.sample_product(a @ b, indices)
    assert hardware_proof.check_samples(42, n, indices, right)
    assert not hardware_proof.check_samples(43, n, indices, right)
    assert not hardware_proof.check_samples(42, n, indices, right[:-1])
    assert not hardware_proof.check_samples(42, n, indices, [*right[:-1], float("nan")])
    assert not hardware_proof.check_samples(42, n, [n * n], [0.0])

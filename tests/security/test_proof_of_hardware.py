"""Proof of hardware against the real coordinator, with real node keys: what a cheating
node tries, and why it gets nothing.

Each attack would have passed the old protocol (seed and sample indices announced
up front, the node's own elapsed_ms trusted): there were no commitments to break.
Times are the coordinator's store clock, which these tests drive (`FakeClock`), so
speeds are asserted exactly and nothing waits on wall time.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import InvalidArgument, RateLimited, TroopError
from troop_common.hardware_proof import multiplier_for, reference_tflops, tflops_for
from troop_common.merkle import MerkleTree
from troop_common.proof_check import Commitment, check_openings
from troop_common.proof_matrices import a_tile, b_tile
from troop_common.proto import coordinator_pb2 as pb
from troop_worker.hardware_proof import openings
from troop_worker.proof_compute import Product, compute

PROOF = {"challenge_interval_s": 0.0}  # the attacks ask for several challenges


@dataclass
class FakeClock:
    now: float = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def drive_clock(mesh) -> FakeClock:
    clock = FakeClock()
    mesh.coordinator.stores.challenges.clock = clock
    return clock


async def refused(call, *codes: grpc.StatusCode) -> TroopError:
    with pytest.raises(TroopError) as caught:
        await call
    assert caught.value.code in codes, caught.value
    return caught.value


def node_client(mesh, worker) -> CoordinatorClient:
    client = CoordinatorClient(mesh.address, worker.identity.key)
    mesh.clients.append(client)
    return client


async def multiplier_listed(mesh, node_id: str) -> float:
    nodes = (await mesh.user().list_nodes()).nodes
    return next(n.multiplier for n in nodes if n.node_id == node_id)


def garbage_product(rows: int, cols: int) -> Product:
    c = np.random.default_rng(1).integers(-500, 500, (rows, cols)).astype(np.float32)
    return Product(c, MerkleTree.over_rows(c), "cpu", "fp32", 1.0)


async def run_proof(
    client,
    node_id: str,
    clock: FakeClock | None,
    *,
    seed_delta: int = 0,
    product_for=None,
    reported_ms: int | None = None,
    tamper=None,
    round_trip_s: float = 0.01,
    work_s: float = 5.0,
):
    """The four steps; returns (challenge, commit answer, verify answer or the error)."""
    challenge = await client.get_challenge(node_id)
    if clock is not None:
        clock.now += round_trip_s  # the round trip before StartChallenge
    seed = (await client.start_challenge(node_id, challenge.challenge_id)).seed
    rows, inner, cols = challenge.rows, challenge.inner, challenge.cols
    product = (product_for or compute)((seed + seed_delta) % 2**64, rows, inner, cols)
    if clock is not None:
        clock.now += work_s  # the coordinator sees the root this long after the seed
    named = await client.commit_proof(
        pb.CommitProofRequest(
            node_id=node_id, challenge_id=challenge.challenge_id, merkle_root=product.tree.root,
            precision="fp32", reported_ms=reported_ms or round(product.elapsed_ms) or 1,
        )
    )  # fmt: skip
    opened = openings(product, list(named.rows))
    if tamper is not None:
        tamper(opened)
    request = pb.VerifyProofRequest(
        node_id=node_id, challenge_id=challenge.challenge_id, openings=opened
    )
    try:
        return challenge, named, await client.verify_proof(request)
    except TroopError as exc:
        return challenge, named, exc


async def test_an_honest_node_proves_at_the_speed_the_coordinator_measured(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        clock = drive_clock(mesh)
        challenge, named, answer = await run_proof(node_client(mesh, worker), worker.node_id, clock)
        assert isinstance(answer, pb.VerifyProofResponse)
        assert (challenge.rows, challenge.inner, challenge.cols) == (32, 256, 24)
        assert len(named.rows) == 32 and len(set(named.rows)) == 32  # every row: only 32
        # 5 s from seed to root, the 10 ms round trip subtracted.
        assert answer.measured_ms == 4990
        tflops = tflops_for(32, 256, 24, 4990)
        assert answer.tflops == pytest.approx(tflops) and answer.tier == "cpu"
        assert answer.multiplier == pytest.approx(multiplier_for(tflops, reference_tflops(1500)))
        assert await multiplier_listed(mesh, worker.node_id) == pytest.approx(answer.multiplier)


async def test_reported_ms_does_not_set_the_speed(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        clock = drive_clock(mesh)
        client = node_client(mesh, worker)
        *_, answer = await run_proof(client, worker.node_id, clock, reported_ms=1)
        assert isinstance(answer, pb.VerifyProofResponse)
        assert answer.measured_ms == 4990  # not 1
        assert answer.tflops == pytest.approx(tflops_for(32, 256, 24, 4990))


async def test_delaying_the_start_to_inflate_the_round_trip_gains_at_most_a_tenth(
    mesh_factory,
) -> None:
    # A node that waits before StartChallenge makes the round trip look long; what is
    # subtracted is capped at 100 ms and at a tenth of the time, so a short run
    # cannot shrink to nothing (the ADR's bound: at most ~11% faster than it is).
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        clock = drive_clock(mesh)
        client = node_client(mesh, worker)
        *_, short = await run_proof(client, worker.node_id, clock, round_trip_s=5.0, work_s=0.05)
        assert isinstance(short, pb.VerifyProofResponse)
        assert short.measured_ms == 45  # 50 ms less a tenth, not 1 ms
        *_, long = await run_proof(client, worker.node_id, clock, round_trip_s=5.0, work_s=3.0)
        assert isinstance(long, pb.VerifyProofResponse)
        assert long.measured_ms == 2900  # 3 s less the 100 ms cap


async def test_a_root_over_garbage_opened_consistently_is_refused(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        client = node_client(mesh, worker)
        before = await multiplier_listed(mesh, worker.node_id)
        *_, answer = await run_proof(
            client, worker.node_id, drive_clock(mesh),
            product_for=lambda seed, rows, inner, cols: garbage_product(rows, cols),
        )  # fmt: skip
        assert isinstance(answer, TroopError)
        assert answer.code == grpc.StatusCode.FAILED_PRECONDITION
        assert await multiplier_listed(mesh, worker.node_id) == before


async def test_a_product_of_another_seed_is_refused(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        *_, answer = await run_proof(
            node_client(mesh, worker), worker.node_id, drive_clock(mesh), seed_delta=1
        )
        assert isinstance(answer, TroopError)
        assert answer.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_opening_whose_path_does_not_lead_to_the_root_is_refused(mesh_factory) -> None:
    def swap_sibling(opened: list[pb.ProofOpening]) -> None:
        opened[3].path[0] = bytes(32)

    def right_values_wrong_tree(opened: list[pb.ProofOpening]) -> None:
        opened[0].values, opened[1].values = opened[1].values, opened[0].values

    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        client = node_client(mesh, worker)
        for tamper in (swap_sibling, right_values_wrong_tree):
            *_, answer = await run_proof(client, worker.node_id, None, tamper=tamper)
            assert isinstance(answer, TroopError)
            assert answer.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "not in the committed tree" in answer.message


async def test_no_step_is_taken_twice(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        client = node_client(mesh, worker)
        challenge, named, answer = await run_proof(client, worker.node_id, None)
        assert isinstance(answer, pb.VerifyProofResponse)
        again = pb.VerifyProofRequest(
            node_id=worker.node_id, challenge_id=challenge.challenge_id, openings=[
                pb.ProofOpening(row=r, values=bytes(24 * 4), path=[bytes(32)] * 5)
                for r in named.rows
            ],
        )  # fmt: skip
        failed = grpc.StatusCode.FAILED_PRECONDITION
        await refused(client.verify_proof(again), failed, grpc.StatusCode.NOT_FOUND)
        await refused(client.start_challenge(worker.node_id, challenge.challenge_id), failed)
        commit = pb.CommitProofRequest(
            node_id=worker.node_id, challenge_id=challenge.challenge_id,
            merkle_root=bytes(32), precision="fp32",
        )  # fmt: skip
        await refused(client.commit_proof(commit), failed)
        # Another node cannot take a step on this node's challenge.
        other = mesh.workers[1]
        fresh = await client.get_challenge(worker.node_id)
        await refused(
            node_client(mesh, other).start_challenge(other.node_id, fresh.challenge_id),
            grpc.StatusCode.PERMISSION_DENIED,
        )


async def test_a_flood_of_challenge_requests_gets_one_challenge(mesh_factory) -> None:
    async with mesh_factory(challenge_interval_s=3600.0) as mesh:
        worker = mesh.workers[0]
        client = node_client(mesh, worker)
        answers = await asyncio.gather(
            *(client.get_challenge(worker.node_id) for _ in range(20)), return_exceptions=True
        )
        granted = [a for a in answers if isinstance(a, pb.GetChallengeResponse)]
        limited = [a for a in answers if isinstance(a, RateLimited)]
        assert len(granted) == 1 and len(limited) == 19
        assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED for e in limited)


async def test_malformed_proof_requests_name_the_field(mesh_factory) -> None:
    async with mesh_factory(**PROOF) as mesh:
        worker = mesh.workers[0]
        client = node_client(mesh, worker)
        node = worker.node_id
        challenge = await client.get_challenge(node)
        cid = challenge.challenge_id
        await client.start_challenge(node, cid)
        cases = [
            (client.start_challenge(node, "x" * 65), "challenge_id"),
            (client.commit_proof(pb.CommitProofRequest(
                node_id=node, challenge_id=cid, merkle_root=b"r" * 31, precision="fp32")),
             "merkle_root"),
            (client.commit_proof(pb.CommitProofRequest(
                node_id=node, challenge_id=cid, merkle_root=b"r" * 32, precision="fp64")),
             "precision"),
        ]  # fmt: skip
        await client.commit_proof(
            pb.CommitProofRequest(node_id=node, challenge_id=cid, merkle_root=b"r" * 32,
                                  precision="fp32")
        )  # fmt: skip
        good = pb.ProofOpening(row=0, values=bytes(24 * 4), path=[bytes(32)] * 5)

        def verify(*opened: pb.ProofOpening):
            return client.verify_proof(
                pb.VerifyProofRequest(node_id=node, challenge_id=cid, openings=opened)
            )

        cases += [
            (verify(*[good] * 65), "openings"),
            (verify(pb.ProofOpening(row=0, values=bytes(7), path=[bytes(32)] * 5)),
             "openings[0].values"),
            (verify(pb.ProofOpening(row=0, values=bytes(96), path=[bytes(32)] * 41)),
             "openings[0].path"),
            (verify(pb.ProofOpening(row=0, values=bytes(96), path=[bytes(31)])),
             "openings[0].path"),
            (verify(pb.ProofOpening(row=32, values=bytes(96), path=[bytes(32)] * 5)),
             "openings[0].row"),
        ]  # fmt: skip
        for call, field in cases:
            with pytest.raises(InvalidArgument) as caught:
                await call
            assert field in {v.field for v in caught.value.violations}, caught.value
        # None of that used the challenge up: the right openings still count.
        await refused(verify(good), grpc.StatusCode.FAILED_PRECONDITION)


def _cheat(rng: random.Random, seed: int, skip: str, guess: float | None):
    """One simulated challenge against a node that skips 10 % of its product."""
    rows, inner, cols = 512, 32, 8
    c = (a_tile(seed, rows, 0, inner) @ b_tile(seed, cols, 0, inner)).astype(np.float32)
    skipped_rows = rng.sample(range(rows), rows // 10)
    if skip == "rows":
        c[skipped_rows] = np.float32(guess) if guess is not None else rng.random() * 1e3
    else:  # 10 % of the entries, spread over every row
        mask = np.array([rng.random() < 0.1 for _ in range(rows * cols)]).reshape(rows, cols)
        c[mask] = np.float32(guess) if guess is not None else np.float32(777.0)
    tree = MerkleTree.over_rows(c)
    open_rows = tuple(rng.sample(range(rows), 48))
    open_cols = tuple(rng.randrange(cols) for _ in open_rows)
    precision = "bf16" if guess is not None else "fp32"  # the loosest tolerance for guesses
    commitment = Commitment(seed, rows, inner, cols, tree.root, precision, open_rows, open_cols)
    product = Product(c, tree, "cpu", precision, 1.0)
    return check_openings(commitment, openings(product, open_rows)) is not None


@pytest.mark.parametrize(("skip", "guess"), [("rows", None), ("entries", None), ("rows", 0.0)])
def test_a_node_that_skips_a_tenth_of_the_product_is_caught_99_percent_of_the_time(
    skip: str, guess: float | None
) -> None:
    rng = random.Random(2024)
    runs = 300
    caught = sum(_cheat(rng, rng.getrandbits(64), skip, guess) for _ in range(runs))
    rate = caught / runs
    print(f"skipping 10% of the {skip} (guess {guess}): caught {caught}/{runs} = {rate:.3f}")
    assert rate >= 0.97

"""Strangers inventing nodes: fake nodes at an honest worker's address, one key with many
node ids, self-reported capacity, admission. Against the real coordinator and two real
workers (fake engine), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from troop_client import Message, TroopClient
from troop_common.admission import hash_invite
from troop_common.errors import InvalidArgument, TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb

MODEL = "smollm2-135m-instruct"


def beat(node_id: str, endpoint: str, **fields: object) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(
        node_id=node_id,
        endpoint=endpoint,
        models=[MODEL],
        owner_public_key=Identity.generate().public_key_hex,
        **fields,
    )


async def test_fake_nodes_at_an_honest_endpoint_are_never_listed(mesh, eventually) -> None:
    honest = mesh.workers[0]
    # 400 fresh keys, each heartbeating a node at the honest worker's address, idle and
    # roomy, listing the real model and 63 made-up names of 200 characters.
    junk = [f"m{i:02d}" + "x" * 197 for i in range(63)]

    async def fake(n: int) -> None:
        client = mesh.user(Identity.generate())
        request = beat(f"fake-{n}", honest.address, load=pb.NodeLoad(max_concurrent_jobs=1024))
        request.models.extend(junk)
        reply = await client.heartbeat(request)
        assert not reply.endpoint_proven

    for start in range(0, 400, 50):
        await asyncio.gather(*(fake(n) for n in range(start, start + 50)))
    # The coordinator dialled the honest address for each: only the honest key answers.
    await asyncio.gather(*mesh.coordinator.endpoint_proofs._running.values())
    listed = (await mesh.user().list_nodes()).nodes
    assert sorted(n.node_id for n in listed) == sorted(w.node_id for w in mesh.workers)
    async with TroopClient(mesh.address, Identity.generate()) as troop:
        for _ in range(5):
            answer = await troop.complete([Message("user", "still here")], model=MODEL)
            assert answer.text == "You said: still here"
        await troop.drain_reports(5)

        async def settled() -> bool:
            return (await troop.balance()).reserved_millicredits == 0

        await eventually(settled)  # nothing locked by a fake node
    assert (await mesh.ledger_state())[2].ok


async def test_one_key_cannot_invent_many_nodes(mesh) -> None:
    key = mesh.user(Identity.generate())
    endpoint = mesh.workers[0].address
    for n in range(4):
        await key.heartbeat(beat(f"mine-{n}", endpoint))
    with pytest.raises(TroopError) as caught:
        await key.heartbeat(beat("mine-4", endpoint))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "TROOP_MAX_NODES_PER_KEY" in caught.value.message
    await key.heartbeat(beat("mine-0", endpoint))  # its own ids still beat


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("load.max_concurrent_jobs", {"load": pb.NodeLoad(max_concurrent_jobs=4294967295)}),
        ("load.active_jobs", {"load": pb.NodeLoad(active_jobs=10**6)}),
        ("hardware.device", {"hardware": pb.NodeHardware(device="g" * 500)}),
    ],
)
async def test_self_reported_capacity_is_bounded(mesh, field: str, request_fields) -> None:
    client = mesh.user(Identity.generate())
    with pytest.raises(InvalidArgument) as caught:
        await client.heartbeat(beat("boaster", mesh.workers[0].address, **request_fields))
    assert [v.field for v in caught.value.violations] == [field]


async def test_discovery_is_paged(mesh) -> None:
    client = mesh.user()
    first = await client._call(
        client.stub.ListNodes, pb.ListNodesRequest(page_size=1), signed=False
    )
    assert len(first.nodes) == 1 and first.next_page_token
    second = await client._call(
        client.stub.ListNodes,
        pb.ListNodesRequest(page_size=1, page_token=first.next_page_token),
        signed=False,
    )
    assert len(second.nodes) == 1 and not second.next_page_token
    assert {first.nodes[0].node_id, second.nodes[0].node_id} == {w.node_id for w in mesh.workers}
    for bad in (pb.ListNodesRequest(page_size=101), pb.ListNodesRequest(page_token="e:9")):
        with pytest.raises(InvalidArgument):
            await client._call(client.stub.ListNodes, bad, signed=False)


async def test_node_admission_by_allowlist(mesh_factory) -> None:
    allowed = Identity.generate()
    async with mesh_factory(
        workers=0, node_admission="allowlist", node_allowlist=(allowed.public_key_hex,)
    ) as mesh:
        with pytest.raises(TroopError) as caught:
            await mesh.user(Identity.generate()).heartbeat(beat("stranger", "127.0.0.1:1"))
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        await mesh.user(allowed).heartbeat(beat("listed", "127.0.0.1:1"))


async def test_node_admission_by_invite(mesh_factory) -> None:
    async with mesh_factory(workers=0, node_admission="invite") as mesh:
        client = mesh.user(Identity.generate())
        with pytest.raises(TroopError) as caught:
            await client.heartbeat(beat("n1", "127.0.0.1:1", invite_code="nope"))
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        await mesh.coordinator.ledger.create_invite(hash_invite("let-me-in"), _now())
        await client.heartbeat(beat("n1", "127.0.0.1:1", invite_code="let-me-in"))
        await client.heartbeat(beat("n1", "127.0.0.1:1"))  # bound: no invite needed again
        with pytest.raises(TroopError):  # spent
            await mesh.user(Identity.generate()).heartbeat(
                beat("n2", "127.0.0.1:1", invite_code="let-me-in")
            )


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)

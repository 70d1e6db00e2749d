"""Identity and accounts: assertions, replay, who may read what, paging, malformed input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from troop_common.assertions import create_assertion
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import (
    AuthError,
    InvalidArgument,
    PermissionDenied,
    from_rpc_error,
)
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import coordinator_pb2_grpc
from troop_coordinator.app import Coordinator

if TYPE_CHECKING:
    from conftest import Network

MODEL = "smollm2-135m-instruct"


async def test_balance_of_unknown_user_is_zero_and_creates_nothing(
    coordinator: Coordinator, network: Network
) -> None:
    user = network.user()
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (0, 0)
    assert (await user.list_transactions()).transactions == []
    assert (await coordinator.ledger.audit()).minted_millicredits == 0


async def test_balance_of_another_user_is_denied(network: Network) -> None:
    await network.node()
    alice, bob = network.user(), network.user()
    await alice.authorize(MODEL)

    with pytest.raises(PermissionDenied) as caught:
        await bob.get_balance(alice.identity.public_key_hex)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied):
        await bob.list_transactions(alice.identity.public_key_hex)


async def test_calls_without_assertion_are_unauthenticated(coordinator: Coordinator) -> None:
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        key = Identity.generate().public_key_hex
        for call, metadata in [
            (stub.GetBalance(pb.GetBalanceRequest(public_key=key)), None),
            (stub.Authorize(pb.AuthorizeRequest(model=MODEL)), None),
            (
                stub.Authorize(
                    pb.AuthorizeRequest(model=MODEL),
                    metadata=[("authorization", "Bearer not-a-jwt")],
                ),
                "garbage",
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata


async def test_replayed_assertion_is_unauthenticated(coordinator: Coordinator) -> None:
    user = Identity.generate()
    metadata = [("authorization", f"Bearer {create_assertion(user)}")]
    request = pb.GetBalanceRequest(public_key=user.public_key_hex)
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        await stub.GetBalance(request, metadata=metadata)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetBalance(request, metadata=metadata)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (caught.value.details() or "")


async def test_assertion_for_another_audience_is_unauthenticated(coordinator: Coordinator) -> None:
    user = Identity.generate()
    token = create_assertion(user, audience="troop-worker")
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetBalance(
                pb.GetBalanceRequest(public_key=user.public_key_hex),
                metadata=[("authorization", f"Bearer {token}")],
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_transactions_page_newest_first(network: Network) -> None:
    await network.node()
    user = network.user()
    grants = [await user.authorize(MODEL) for _ in range(5)]  # 1 grant + 5 reserves
    jobs = [g.job_id for g in grants]
    held = sum(g.reserved_millicredits for g in grants)

    seen: list[pb.Transaction] = []
    token = ""
    pages = 0
    while True:
        page = await user.list_transactions(page_size=2, page_token=token)
        seen.extend(page.transactions)
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert [t.id for t in seen] == sorted((t.id for t in seen), reverse=True)
    assert [t.job_id for t in seen[:5]] == list(reversed(jobs))
    assert seen[-1].kind == pb.TRANSACTION_KIND_GRANT
    assert seen[-1].amount_millicredits == 3_600_000
    assert seen[0].balance_after_millicredits == 3_600_000 - held
    assert [t.amount_millicredits for t in seen[:5]] == [
        -g.reserved_millicredits for g in reversed(grants)
    ]
    everything = await user.list_transactions(page_size=1000)
    assert len(everything.transactions) == 6 and not everything.next_page_token


async def test_malformed_requests_are_invalid_argument(network: Network) -> None:
    node = await network.node()
    user = network.user()
    bad_calls = [
        user.get_balance("not-hex"),
        user.get_balance("ab" * 31),
        user.list_transactions(page_token="!!garbage!!"),
        user.list_transactions(page_token="ZTotNQ"),  # decodes to "e:-5"
        # "e:99999999999999999999999": an id no BIGINT holds (it was INTERNAL).
        user.list_transactions(page_token="ZTo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"),
        user.authorize(""),
        user.authorize("bad model id with spaces"),
        user.submit_receipt(pb.SubmitReceiptRequest(receipt=b"\xff\x00garbage", signature=b"x")),
        user.submit_receipt(pb.SubmitReceiptRequest(receipt=b"\x0a\x03abc", signature=b"s" * 64)),
        user.submit_receipt(pb.SubmitReceiptRequest()),
        node.client.heartbeat(
            pb.HeartbeatRequest(
                node_id="bad id!",
                endpoint="nohost",
                models=[],
                owner_public_key="zz",
            )
        ),
        node.client.get_challenge("../etc"),
        node.client.verify_proof(pb.VerifyProofRequest(node_id=node.node_id)),
        user.list_nodes(model="spaces are bad"),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgument) as caught:
            await call
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.violations


async def test_heartbeat_violations_name_every_field(network: Network) -> None:
    node = await network.node()
    with pytest.raises(InvalidArgument) as caught:
        await node.client.heartbeat(
            pb.HeartbeatRequest(node_id="", endpoint="h:0", models=[""], owner_public_key="")
        )
    fields = {v.field for v in caught.value.violations}
    assert {"node_id", "endpoint", "models[0]", "owner_public_key"} <= fields


async def test_heartbeat_without_assertion_maps_to_auth_error(coordinator: Coordinator) -> None:
    with pytest.raises(AuthError):
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            try:
                await stub.Heartbeat(pb.HeartbeatRequest())
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc


async def test_join_grants_the_starter_credits_once(network: Network) -> None:
    user = network.user()
    assert (await user.get_balance()).balance_millicredits == 0  # reading created nothing

    first = await user.join()
    second = await user.join()

    assert (first.granted_millicredits, first.already_joined) == (3_600_000, False)
    assert (second.granted_millicredits, second.already_joined) == (0, True)
    assert (await user.get_balance()).balance_millicredits == 3_600_000
    kinds = [t.kind for t in (await user.list_transactions()).transactions]
    assert kinds == [pb.TRANSACTION_KIND_GRANT]


async def test_join_without_an_assertion_is_unauthenticated(network: Network) -> None:
    anonymous = CoordinatorClient(network.address)
    try:
        with pytest.raises(AuthError):
            await anonymous._call(anonymous.stub.Join, pb.JoinRequest(), signed=False)
    finally:
        await anonymous.close()

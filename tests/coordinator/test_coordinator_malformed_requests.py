"""Every coordinator RPC, fed malformed requests through a real server, answers with a
status the caller can act on (never INTERNAL or UNKNOWN) and moves no credits.

Runs on both backends: PostgreSQL refuses bytes SQLite stores (a NUL in a string), so
a check missing from validation shows up there first.
"""

from __future__ import annotations

import random

import grpc
import pytest

from tests.coordinator.conftest import MODEL, Launch
from tests.malformed import GARBAGE_PROTOBUF, malformed
from troop_common.assertions import create_assertion
from troop_common.errors import InvalidArgument
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb

CALLS_PER_METHOD = 30
NOT_ACTIONABLE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


async def test_malformed_requests_get_clear_errors_and_move_no_credits(launch: Launch) -> None:
    coordinator, network = await launch(rate_limits="")  # limits would hide deeper checks
    node = await network.node()
    user = network.user()
    await user.join()
    await node.client.join()  # open admission: any key may join once; both already have
    await user.authorize(MODEL)  # one open reservation the noise must not touch
    before = await coordinator.ledger.audit()
    balance_before = await user.get_balance()
    callers: list[Identity | None] = [None, user.identity, node.identity]

    rng = random.Random(20261127)
    refused: list[str] = []
    service = pb.DESCRIPTOR.services_by_name["CoordinatorService"]
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        for method in service.methods:
            request_type = getattr(pb, method.input_type.name)
            call = channel.unary_unary(
                f"/troop.v1.CoordinatorService/{method.name}",
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=getattr(pb, method.output_type.name).FromString,
            )
            for i in range(CALLS_PER_METHOD):
                request = malformed(request_type, rng) if i else request_type()
                caller = callers[i % len(callers)]
                metadata = (
                    [("authorization", f"Bearer {create_assertion(caller)}")] if caller else []
                )
                try:
                    await call(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as error:
                    if error.code() in NOT_ACTIONABLE or not error.details():
                        refused.append(f"{method.name} {error.code().name}: {request!s:.200}")

    assert refused == []
    after = await coordinator.ledger.audit()
    assert after.ok, after
    assert after.minted_millicredits == before.minted_millicredits
    assert after.open_reservations_millicredits == before.open_reservations_millicredits
    assert await user.get_balance() == balance_before


@pytest.mark.parametrize("job_id", ["", "a\x00b", "x" * 65, "../job"])
async def test_a_job_id_no_coordinator_issues_is_invalid_argument(
    launch: Launch, job_id: str
) -> None:
    _, network = await launch()
    node = await network.node()
    with pytest.raises(InvalidArgument) as caught:
        await network.user().report_usage(job_id, completion_tokens=1, stream_ms=1)
    assert [v.field for v in caught.value.violations] == ["job_id"]
    with pytest.raises(InvalidArgument) as caught:
        await node.client.submit_receipt(node.receipt(job_id))
    assert [v.field for v in caught.value.violations] == ["receipt.job_id"]


@pytest.mark.parametrize(
    ("field", "completion_tokens", "stream_ms"),
    [("completion_tokens", 1_000_001, 1), ("stream_ms", 1, 2**64 - 1)],
)
async def test_countersigned_numbers_out_of_range_are_invalid_and_record_nothing(
    launch: Launch, field: str, completion_tokens: int, stream_ms: int
) -> None:
    coordinator, network = await launch()
    await network.node()
    user = network.user()
    job = await user.authorize("smollm2-135m-instruct")
    with pytest.raises(InvalidArgument) as caught:
        await user.report_usage(
            job.job_id, completion_tokens=completion_tokens, stream_ms=stream_ms
        )
    assert [v.field for v in caught.value.violations] == [field]
    # Nothing was recorded: the honest report is still the first.
    honest = await user.report_usage(job.job_id, completion_tokens=3, stream_ms=10)
    assert not honest.already_reported
    assert (await coordinator.ledger.audit()).ok


async def test_bytes_that_are_no_protobuf_are_invalid_argument_on_every_rpc(
    launch: Launch,
) -> None:
    coordinator, network = await launch(rate_limits="")
    user = network.user()
    await user.join()
    before = await coordinator.ledger.audit()
    unclear = []
    service = pb.DESCRIPTOR.services_by_name["CoordinatorService"]
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        for method in service.methods:
            call = channel.unary_unary(f"/{service.full_name}/{method.name}")  # raw bytes
            for data in GARBAGE_PROTOBUF:
                token = create_assertion(user.identity)
                try:
                    await call(data, metadata=[("authorization", f"Bearer {token}")], timeout=10)
                    unclear.append(f"{method.name} accepted {data[:16]!r}")
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        unclear.append(f"{method.name} {error.code().name}: {error.details()}")
    assert unclear == []
    after = await coordinator.ledger.audit()
    assert after.minted_millicredits == before.minted_millicredits

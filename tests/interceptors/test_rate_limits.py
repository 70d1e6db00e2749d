"""Rate limits through real coordinators: exact, shared across replicas, never on health."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import coordinator_pb2_grpc


async def _list_nodes(stub) -> grpc.StatusCode:
    try:
        await stub.ListNodes(pb.ListNodesRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_the_101st_discovery_call_in_an_hour_is_refused_with_retry_info(
    start_coordinator,
) -> None:
    coordinator = await start_coordinator()  # the default: discovery 100/hour per IP
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        for i in range(100):
            call = stub.ListModels if i % 2 else stub.ListNodes
            request = pb.ListModelsRequest() if i % 2 else pb.ListNodesRequest()
            await call(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListNodes(pb.ListNodesRequest(), timeout=10)
        # Health and the public key are never limited, even now.
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await stub.GetPublicKey(pb.GetPublicKeyRequest(), timeout=10)

    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata() or ())
    assert 30 <= int(trailers["retry-after"]) <= 37  # one slot frees every 36 s
    status = rpc_status.from_call(error)
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert 30 <= info.retry_delay.seconds <= 36


async def test_two_replicas_sharing_redis_enforce_one_limit(
    start_coordinator, redis_url: str, redis_prefix: str
) -> None:
    limits = "ListNodes+ListModels=10/3600@ip"
    replicas = [
        await start_coordinator(redis_url=redis_url, redis_prefix=redis_prefix, rate_limits=limits)
        for _ in range(2)
    ]
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    try:
        stubs = [coordinator_pb2_grpc.CoordinatorServiceStub(c) for c in channels]
        outcomes = [await _list_nodes(stubs[i % 2]) for i in range(30)]
    finally:
        for channel in channels:
            await channel.close()
    assert outcomes.count(grpc.StatusCode.OK) == 10
    assert set(outcomes[10:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_a_flood_from_50_clients_leaves_the_limit_exact_and_the_server_healthy(
    start_coordinator,
) -> None:
    coordinator = await start_coordinator()

    async def client() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            return [await _list_nodes(stub) for _ in range(40)]

    results = [
        code for codes in await asyncio.gather(*(client() for _ in range(50))) for code in codes
    ]
    assert len(results) == 2000
    assert results.count(grpc.StatusCode.OK) == 100
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1900
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await coordinator_pb2_grpc.CoordinatorServiceStub(channel).GetPublicKey(
            pb.GetPublicKeyRequest(), timeout=10
        )


def test_rules_are_parsed_and_bad_ones_named() -> None:
    from troop_common.interceptors.ratelimit import parse_rules

    rules = parse_rules("ListNodes+ListModels=100/3600@ip, Authorize=20/3600@user")
    assert rules["ListNodes"] == rules["ListModels"]
    assert (rules["Authorize"].limit, rules["Authorize"].per) == (20, "user")
    assert parse_rules("") == {}
    with pytest.raises(ValueError, match="Authorize=lots"):
        parse_rules("Authorize=lots")

"""Asking a gRPC server whether it serves (grpc.health.v1 Check), with the reason if not."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from troop_common.errors import from_rpc_error


async def health_problem(channel: grpc.aio.Channel, timeout_s: float = 1.0) -> str | None:
    """None when the server at the other end of `channel` answers SERVING; otherwise what
    is wrong, in words ("connection refused", "NOT_SERVING", ...)."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc).message
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return None


__all__ = ["health_problem"]

"""The one error mapping: each domain error, raised in a real server, reaches a real client
as its gRPC status with its details, and maps back to the same error class."""

from __future__ import annotations

import grpc
import pytest

from troop_common import errors
from troop_common.errors import FieldViolation
from troop_common.server import TroopServer

RAISED: dict[str, errors.TroopError] = {
    "invalid": errors.InvalidArgument([FieldViolation("model", "required")]),
    "ticket": errors.TicketInvalid("ticket expired"),
    "reused": errors.TicketReused("ticket already used"),
    "assertion": errors.AssertionInvalid("assertion already used"),
    "signature": errors.SignatureInvalid("signature does not verify"),
    "denied": errors.PermissionDenied("a user can only read their own account"),
    "missing": errors.NotFound("no job x"),
    "credits": errors.InsufficientCredits(300_000, 1_000),
    "precondition": errors.FailedPrecondition("join first"),
    "limited": errors.RateLimited("rate limit", 12.5),
    "no-node": errors.NodeUnavailable("no live node serves model m"),
    "down": errors.Unavailable("discovery unavailable"),
}
EXPECTED = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    "ticket": (grpc.StatusCode.UNAUTHENTICATED, errors.AuthError),
    "reused": (grpc.StatusCode.UNAUTHENTICATED, errors.AuthError),
    "assertion": (grpc.StatusCode.UNAUTHENTICATED, errors.AuthError),
    "signature": (grpc.StatusCode.UNAUTHENTICATED, errors.AuthError),
    "denied": (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    "missing": (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    "credits": (grpc.StatusCode.FAILED_PRECONDITION, errors.InsufficientCredits),
    "precondition": (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
    "limited": (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.RateLimited),
    "no-node": (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    "down": (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
}


async def _raise_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"bug":
        raise KeyError("a bug with a secret in it: eyJhbGciOi.e30.sig")
    raise RAISED[request.decode()]


async def _raise_stream(request: bytes, context: grpc.aio.ServicerContext):
    yield b"first"
    raise RAISED[request.decode()]


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_raise_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_raise_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Errors", handlers)])


@pytest.fixture
async def channel():
    async with TroopServer(registrars=[_register], service_names=["test.Errors"]) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield channel


@pytest.mark.parametrize("name", sorted(RAISED))
async def test_each_domain_error_maps_to_its_status_and_back(channel, name: str) -> None:
    call = channel.unary_unary("/test.Errors/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(name.encode(), timeout=10)
    code, cls = EXPECTED[name]
    assert failed.value.code() == code
    assert failed.value.details() == RAISED[name].message
    mapped = errors.from_rpc_error(failed.value)
    assert isinstance(mapped, cls)
    if name == "invalid":
        assert mapped.violations == [FieldViolation("model", "required")]
    if name == "limited":
        assert mapped.retry_after_seconds == pytest.approx(12.5)
        assert dict(failed.value.trailing_metadata())["retry-after"] == "13"


async def test_a_mid_stream_error_arrives_after_the_messages_sent(channel) -> None:
    call = channel.unary_stream("/test.Errors/Stream")(b"no-node", timeout=10)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in call:
            received.append(message)
    assert received == [b"first"]
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_anything_else_is_internal_without_its_text(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(b"bug", timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error"  # no traceback, no secret

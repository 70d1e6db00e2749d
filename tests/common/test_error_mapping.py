"""The one error mapping: each domain error, raised in a real server, reaches a real client
as its gRPC status with its ErrorInfo and details, and maps back to the same error class
with the same fields. A status without an ErrorInfo (Envoy's, grpc's own) maps by its code."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.conftest import free_port
from troop_common import errors
from troop_common.errors import FieldViolation
from troop_common.resilience import is_transient
from troop_common.server import TroopServer

ROOT = Path(__file__).resolve().parents[2]

# One of each class, with fields that differ from any default.
RAISED: dict[str, errors.TroopError] = {
    "internal": errors.TroopError("the ledger disagrees with itself"),
    "invalid": errors.InvalidArgument(
        [FieldViolation("model", "required"), FieldViolation("max_tokens", "at most 512")]
    ),
    "auth": errors.AuthError("missing bearer token"),
    "ticket": errors.TicketInvalid("ticket expired"),
    "reused": errors.TicketReused("ticket already used"),
    "assertion": errors.AssertionInvalid("assertion already used"),
    "signature": errors.SignatureInvalid("signature does not verify"),
    "presentation-missing": errors.PresentationMissing("x-troop-presentation is missing"),
    "node-proof": errors.NodeProofInvalid("the worker is not the node the ticket names"),
    "denied": errors.PermissionDenied("a user can only read their own account"),
    "presentation": errors.PresentationInvalid("the receipt carries no presentation"),
    "missing": errors.NotFound("no job x"),
    "precondition": errors.FailedPrecondition("join first"),
    "credits": errors.InsufficientCredits(300_000, 1_000),
    "limited": errors.RateLimited("rate limit", 12.5),
    "down": errors.Unavailable("discovery unavailable"),
    "no-node": errors.NodeUnavailable("no live node serves model m", model="m"),
    "unreachable": errors.Unreachable("redis at 10.0.0.9:6379", "connection refused"),
}
FIELDS = {
    errors.InvalidArgument: ["violations"],
    errors.InsufficientCredits: ["needed", "balance"],
    errors.RateLimited: ["retry_after_seconds"],
    errors.NodeUnavailable: ["model"],
}


def test_every_class_declares_its_own_reason_once() -> None:
    assert {type(e) for e in RAISED.values()} == set(errors.ERROR_CLASSES)
    reasons = [cls.reason for cls in errors.ERROR_CLASSES]
    assert len(set(reasons)) == len(reasons)
    for cls in errors.ERROR_CLASSES:
        assert "reason" in cls.__dict__, cls
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", cls.reason), cls.reason


async def _raise_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"bug":
        raise KeyError("a bug with a secret in it: eyJhbGciOi.e30.sig")
    if request == b"bare":  # a status as Envoy or another server would make it
        await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error")
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


def _assert_rebuilt(name: str, failed: grpc.aio.AioRpcError) -> None:
    raised = RAISED[name]
    assert failed.code() == raised.code
    assert failed.details() == raised.message
    details = rpc_status.from_call(failed).details
    info = [d for d in details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(info) == 1
    unpacked = error_details_pb2.ErrorInfo()
    info[0].Unpack(unpacked)
    assert (unpacked.domain, unpacked.reason) == ("troop.network", raised.reason)
    assert dict(unpacked.metadata) == raised.info()

    mapped = errors.from_rpc_error(failed, "the test server")
    # A server that could not reach something was itself reached: plain Unavailable.
    expected = errors.Unavailable if name == "unreachable" else type(raised)
    assert type(mapped) is expected
    assert mapped.message == str(mapped) == raised.message
    assert mapped.transient == raised.transient
    for field in FIELDS.get(type(raised), []):
        assert getattr(mapped, field) == getattr(raised, field), field


@pytest.mark.parametrize("name", sorted(RAISED))
async def test_each_domain_error_maps_to_its_status_and_back(channel, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(name.encode(), timeout=10)
    _assert_rebuilt(name, failed.value)
    if name == "limited":
        assert dict(failed.value.trailing_metadata())["retry-after"] == "13"


@pytest.mark.parametrize("name", ["credits", "limited", "no-node", "reused", "invalid"])
async def test_a_mid_stream_error_arrives_after_the_messages_sent(channel, name: str) -> None:
    call = channel.unary_stream("/test.Errors/Stream")(name.encode(), timeout=10)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in call:
            received.append(message)
    assert received == [b"first"]
    _assert_rebuilt(name, failed.value)


async def test_insufficient_credits_from_the_wire_says_what_the_server_said(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(b"credits", timeout=10)
    mapped = errors.from_rpc_error(failed.value)
    assert isinstance(mapped, errors.InsufficientCredits)
    assert (mapped.needed, mapped.balance) == (300_000, 1_000)
    assert "reserves 300.000" in str(mapped) and "the balance is 1.000" in str(mapped)


async def test_anything_else_is_internal_without_its_text(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(b"bug", timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error"  # no traceback, no secret
    mapped = errors.from_rpc_error(failed.value)
    assert type(mapped) is errors.TroopError and mapped.reason == "INTERNAL"


async def test_a_status_without_error_info_maps_by_its_code(channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary("/test.Errors/Unary")(b"bare", timeout=10)
    assert rpc_status.from_call(failed.value) is None
    mapped = errors.from_rpc_error(failed.value, "the coordinator at x")
    assert type(mapped) is errors.Unavailable and mapped.transient
    assert mapped.message == "upstream connect error"


class _Call(grpc.RpcError):
    """A failed call as grpc hands it over, with the trailers a server chose."""

    def __init__(self, code: grpc.StatusCode, details: str, info: list[object]) -> None:
        status = status_pb2.Status(code=code.value[0], message=details)
        for detail in info:
            status.details.add().Pack(detail)
        self._trailers = tuple(rpc_status.to_status(status).trailing_metadata)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize(
    "info",
    [
        error_details_pb2.ErrorInfo(reason="NO_NODE_AVAILABLE", domain="example.com"),
        error_details_pb2.ErrorInfo(reason="A_REASON_FROM_THE_FUTURE", domain="troop.network"),
        # A reason whose class has another code: the code wins.
        error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain="troop.network"),
    ],
)
def test_an_error_info_this_client_cannot_use_leaves_the_code_to_decide(info) -> None:
    mapped = errors.from_rpc_error(_Call(grpc.StatusCode.UNAVAILABLE, "busy", [info]))
    assert type(mapped) is errors.Unavailable


def test_unreadable_metadata_leaves_the_code_to_decide() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="INSUFFICIENT_CREDITS", domain="troop.network", metadata={"needed_millicredits": "x"}
    )
    call = _Call(grpc.StatusCode.FAILED_PRECONDITION, "insufficient credits", [info])
    mapped = errors.from_rpc_error(call)
    assert type(mapped) is errors.FailedPrecondition and mapped.message == "insufficient credits"


def test_transient_is_the_transports_alone() -> None:
    transient = {cls for cls in errors.ERROR_CLASSES if cls.transient}
    assert transient == {errors.Unavailable, errors.Unreachable}
    assert not is_transient(errors.NodeUnavailable("no live node serves model m"))
    assert not is_transient(errors.RateLimited("slow down", 1))
    assert is_transient(errors.Unreachable("the coordinator at x", "connection refused"))


_DYING_SERVER = """
import asyncio, grpc

async def stream(request, context):
    while True:
        yield b"token"
        await asyncio.sleep(0.05)

async def main():
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Dying", {"Stream": handler})]
    )
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


async def test_a_server_dying_mid_stream_is_unavailable_not_unreachable() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_SERVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        address = f"127.0.0.1:{int(await process.stdout.readline())}"
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_stream("/test.Dying/Stream")(b"", timeout=30)
            received = 0
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in call:
                    received += 1
                    if received == 2:
                        process.kill()  # the worker's process dies with the stream open
            mid_stream = errors.from_rpc_error(failed.value, f"node n at {address}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    assert type(mid_stream) is errors.Unavailable and mid_stream.transient
    assert mid_stream.message.startswith(f"the connection to node n at {address} broke")
    # (A call that reaches no server at all is Unreachable: the next test. The next call on
    # this same channel may still see the dead connection's broken pipe, so it proves
    # nothing either way.)


async def test_a_port_nobody_listens_on_is_unreachable() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary("/test.Errors/Unary")(b"x", timeout=10)
    mapped = errors.from_rpc_error(failed.value, "the coordinator")
    assert type(mapped) is errors.Unreachable
    assert (mapped.target, mapped.cause) == ("the coordinator", "connection refused")


def test_the_contract_lists_every_reason() -> None:
    proto = (ROOT / "protos/troop/v1/common.proto").read_text()
    listed = re.findall(r"^//   ([A-Z][A-Z0-9_]+) +([A-Z_]+) +(yes|no) ", proto, re.MULTILINE)
    assert sorted(listed) == sorted(
        (cls.reason, cls.code.name, "yes" if cls.transient else "no")
        for cls in errors.ERROR_CLASSES
    )
    docs = (ROOT / "docs/protocol.md").read_text()
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `(\w+)` \| (\w+) \|", docs, re.MULTILINE)
    assert sorted(rows) == sorted(
        (cls.reason, cls.__name__, cls.code.name) for cls in errors.ERROR_CLASSES
    )

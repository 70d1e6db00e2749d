"""Troop's one error tree. Every domain failure is one of these; each carries its gRPC code.

    TroopError                      (INTERNAL)
    ├── InvalidArgument             (INVALID_ARGUMENT, with field violations)
    ├── AuthError                   (UNAUTHENTICATED)
    │   ├── TicketInvalid           forged, expired, wrong audience/node/model
    │   ├── TicketReused            a ticket presented twice
    │   ├── AssertionInvalid        a user/node assertion that does not verify
    │   └── SignatureInvalid        a receipt not signed by its node's key
    ├── PermissionDenied            (PERMISSION_DENIED)
    ├── NotFound                    (NOT_FOUND)
    ├── InsufficientCredits         (FAILED_PRECONDITION, with a PreconditionFailure)
    ├── FailedPrecondition          (FAILED_PRECONDITION)
    ├── RateLimited                 (RESOURCE_EXHAUSTED, with RetryInfo)
    └── Unavailable                 (UNAVAILABLE) a peer or backend cannot be reached
        ├── NodeUnavailable         no live node serves the model
        └── Unreachable             client side: no server answered (refused, unresolvable)

Servers map these to a status in one interceptor (`troop_common.interceptors`);
clients map a failed call back with `from_rpc_error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TroopError(Exception):
    """Base of every domain error."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[object]:
        """google.rpc detail messages to attach to the status."""
        return []

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return []


class InvalidArgument(TroopError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {text}")

    def details(self) -> list[object]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
        ]


class AuthError(TroopError):
    code = grpc.StatusCode.UNAUTHENTICATED


class TicketInvalid(AuthError):
    pass


class TicketReused(AuthError):
    pass


class AssertionInvalid(AuthError):
    pass


class SignatureInvalid(AuthError):
    pass


class PermissionDenied(TroopError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(TroopError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(TroopError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InsufficientCredits(FailedPrecondition):
    def __init__(self, needed_millicredits: int, balance_millicredits: int) -> None:
        self.needed = needed_millicredits
        self.balance = balance_millicredits
        super().__init__(
            f"insufficient credits: this job reserves {needed_millicredits / 1000:.3f} "
            f"(its prompt and max_tokens at the model's price; ask for fewer max_tokens "
            f"to reserve less), the balance is {balance_millicredits / 1000:.3f}"
        )

    def details(self) -> list[object]:
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="INSUFFICIENT_CREDITS",
                        subject="balance",
                        description=self.message,
                    )
                ]
            )
        ]


class RateLimited(TroopError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(0.0, retry_after_seconds)

    def details(self) -> list[object]:
        seconds = int(self.retry_after_seconds)
        nanos = int((self.retry_after_seconds - seconds) * 1e9)
        return [
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)
            )
        ]

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return [("retry-after", str(max(1, round(self.retry_after_seconds + 0.499))))]


class Unavailable(TroopError):
    code = grpc.StatusCode.UNAVAILABLE


class NodeUnavailable(Unavailable):
    pass


class Unreachable(Unavailable):
    """No server answered: the connection was refused, the host did not resolve, the TLS
    handshake failed. `target` says what was dialled ("the coordinator at host:port")."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"cannot reach {target} ({reason})")
        self.target = target
        self.reason = reason


# What gRPC's own transport (not a server) puts in the details of a call that never
# reached a server, and the reason as a person would say it.
_TRANSPORT_FAILURES = (
    ("Connection refused", "connection refused"),
    ("DNS resolution failed", "the host name does not resolve"),
    ("errors resolving", "the host name does not resolve"),
    ("andshake failed", "the TLS handshake failed"),
    ("failed to connect to all addresses", "no address accepted a connection"),
    ("Socket closed", "the connection closed"),
)


def _unreachable_reason(details: str) -> str | None:
    for marker, reason in _TRANSPORT_FAILURES:
        if marker in details:
            return reason
    return None


@dataclass(frozen=True)
class Status:
    """What a server aborts with: code, message and trailing metadata (rich details inside)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def to_status(error: TroopError) -> Status:
    """The rich gRPC status for a domain error."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in error.details():
        status.details.add().Pack(detail)
    rich = rpc_status.to_status(status)
    return Status(
        rich.code, rich.details, tuple(rich.trailing_metadata) + tuple(error.trailing_metadata())
    )


_BY_CODE: dict[grpc.StatusCode, type[TroopError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError, target: str = "") -> TroopError:
    """The domain error a failed call stands for (clients raise it `from exc`).

    `target` names what was called ("the coordinator at host:port"): a call that never
    reached a server becomes `Unreachable` with that name in its message.
    """
    code = exc.code()
    message = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        reason = _unreachable_reason(message)
        if reason is not None:
            return Unreachable(target or "the server", reason)
    status = _rich_status(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = [
            FieldViolation(v.field, v.description)
            for d in _unpack(status, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        error: TroopError = InvalidArgument(violations or [FieldViolation("", message)])
        error.message = message
        return error
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry = 0.0
        for info in _unpack(status, error_details_pb2.RetryInfo):
            retry = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        return RateLimited(message, retry)
    if code == grpc.StatusCode.FAILED_PRECONDITION and any(
        v.type == "INSUFFICIENT_CREDITS"
        for d in _unpack(status, error_details_pb2.PreconditionFailure)
        for v in d.violations
    ):
        error = InsufficientCredits(0, 0)
        error.message = message
        return error
    cls = _BY_CODE.get(code, TroopError)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        cls = Unavailable
    return cls(message)


def _rich_status(exc: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(exc)
    except (ValueError, AttributeError, TypeError):
        return None


def _unpack(status: status_pb2.Status | None, kind: type[Message]) -> list:
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


__all__ = [
    "AssertionInvalid",
    "AuthError",
    "FailedPrecondition",
    "FieldViolation",
    "InsufficientCredits",
    "InvalidArgument",
    "NodeUnavailable",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "SignatureInvalid",
    "Status",
    "TicketInvalid",
    "TicketReused",
    "TroopError",
    "Unavailable",
    "Unreachable",
    "from_rpc_error",
    "to_status",
]

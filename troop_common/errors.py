"""Troop's one error tree. Every domain failure is one of these; each carries its gRPC code
and, on the wire, a `google.rpc.ErrorInfo` (domain "troop.network") whose `reason` names the
exact class. The reasons are part of the contract: protos/troop/v1/common.proto lists them and
docs/protocol.md ("Errors") gives their codes, HTTP statuses and whether to retry.

    class                           reason                code
    TroopError                      INTERNAL              INTERNAL
    ├── InvalidArgument             INVALID_ARGUMENT      INVALID_ARGUMENT (BadRequest)
    ├── AuthError                   UNAUTHENTICATED       UNAUTHENTICATED
    │   ├── TicketInvalid           TICKET_INVALID        forged, expired, wrong audience/node/model
    │   ├── TicketReused            TICKET_REUSED         a ticket presented twice
    │   ├── AssertionInvalid        ASSERTION_INVALID     a user/node assertion that does not verify
    │   ├── SignatureInvalid        SIGNATURE_INVALID     a receipt not signed by its node's key
    │   ├── PresentationMissing     PRESENTATION_MISSING  a job without the user's presentation
    │   └── NodeProofInvalid        NODE_PROOF_INVALID    (client side) the worker is not the node
    ├── PermissionDenied            PERMISSION_DENIED     PERMISSION_DENIED
    │   └── PresentationInvalid     PRESENTATION_INVALID  a receipt without the user's presentation
    ├── NotFound                    NOT_FOUND             NOT_FOUND
    ├── FailedPrecondition          FAILED_PRECONDITION   FAILED_PRECONDITION
    │   └── InsufficientCredits     INSUFFICIENT_CREDITS  (+ PreconditionFailure; needed, balance)
    ├── RateLimited                 RATE_LIMITED          RESOURCE_EXHAUSTED (+ RetryInfo)
    └── Unavailable                 UNAVAILABLE           UNAVAILABLE: a peer or backend is down
        ├── NodeUnavailable         NO_NODE_AVAILABLE     no live node serves the model (an answer)
        └── Unreachable             UNREACHABLE           client side: no server answered

`transient` says whether the failure is the transport's (worth another try later, counted by
the circuit breaker) rather than an answer: only Unavailable and Unreachable are. A refusal,
"no node serves this model" and a rate limit (which says itself when to come back) are answers.

Servers map these to a status in one interceptor (`troop_common.interceptors`); clients map a
failed call back with `from_rpc_error`, which rebuilds the exact class from the ErrorInfo and
falls back to the status code for a status without one (made by Envoy or grpc itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# ErrorInfo.domain of every Troop error.
DOMAIN = "troop.network"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TroopError(Exception):
    """Base of every domain error.

    A subclass declares its `reason` (its ErrorInfo reason, UPPER_SNAKE_CASE, unique) and, if
    it has fields, how they travel: `info()` writes them to the ErrorInfo metadata, `rebuild`
    reads them back.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    # Worth another try later: a failure of the transport, not an answer.
    transient: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        """google.rpc detail messages to attach to the status, after its ErrorInfo."""
        return []

    def info(self) -> dict[str, str]:
        """The ErrorInfo metadata: this error's fields, as strings."""
        return {}

    def error_info(self) -> error_details_pb2.ErrorInfo:
        return error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.info())

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        """This error from the wire: its message, ErrorInfo metadata and rich status.
        Raises ValueError (or KeyError) for metadata it cannot read."""
        return cls(message)

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return []


class InvalidArgument(TroopError):
    """The request itself is wrong; `violations` name each bad field (do not retry as is)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {text}")

    def details(self) -> list[Message]:
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

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        return cls(_violations(status) or [FieldViolation("", message)])


class AuthError(TroopError):
    """The caller's identity, ticket or signature was not accepted."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class TicketInvalid(AuthError):
    reason = "TICKET_INVALID"


class TicketReused(AuthError):
    reason = "TICKET_REUSED"


class AssertionInvalid(AuthError):
    reason = "ASSERTION_INVALID"


class SignatureInvalid(AuthError):
    reason = "SIGNATURE_INVALID"


class PresentationMissing(AuthError):
    """The call did not carry the user's signed presentation of its ticket."""

    reason = "PRESENTATION_MISSING"


class NodeProofInvalid(AuthError):
    """The worker could not prove it holds the key of the node the ticket names."""

    reason = "NODE_PROOF_INVALID"


class PermissionDenied(TroopError):
    """The caller is known but may not do this (a spent or wrong invite, another's job)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class PresentationInvalid(PermissionDenied):
    """The receipt does not carry the job's user's presentation of its ticket."""

    reason = "PRESENTATION_INVALID"


class NotFound(TroopError):
    """What the request names does not exist (a job id, a node id)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(TroopError):
    """The request is well formed but the state refuses it now (e.g. not joined yet)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class InsufficientCredits(FailedPrecondition):
    """The job's reservation is more than the balance: `needed` and `balance`, in
    millicredits."""

    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, needed_millicredits: int, balance_millicredits: int) -> None:
        self.needed = needed_millicredits
        self.balance = balance_millicredits
        super().__init__(
            f"insufficient credits: this job reserves {needed_millicredits / 1000:.3f} "
            f"(its prompt and max_tokens at the model's price; ask for fewer max_tokens "
            f"to reserve less), the balance is {balance_millicredits / 1000:.3f}"
        )

    def details(self) -> list[Message]:
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

    def info(self) -> dict[str, str]:
        return {
            "needed_millicredits": str(self.needed),
            "balance_millicredits": str(self.balance),
        }

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        return cls(int(info["needed_millicredits"]), int(info["balance_millicredits"]))


class RateLimited(TroopError):
    """Not transient: the limit answered, and says itself when to come back
    (`retry_after_seconds`); backing off by the transport's schedule would only hit it again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(0.0, retry_after_seconds)

    def details(self) -> list[Message]:
        seconds = int(self.retry_after_seconds)
        nanos = int((self.retry_after_seconds - seconds) * 1e9)
        return [
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)
            )
        ]

    def info(self) -> dict[str, str]:
        # Decimal seconds, at most millisecond precision: "12.5", "3600".
        return {"retry_after_seconds": f"{self.retry_after_seconds:.3f}".rstrip("0").rstrip(".")}

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        if "retry_after_seconds" in info:
            return cls(message, float(info["retry_after_seconds"]))
        return cls(message, _retry_delay(status))

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return [("retry-after", str(max(1, round(self.retry_after_seconds + 0.499))))]


class Unavailable(TroopError):
    """A peer or backend cannot serve now (down, overloaded, its connection broke)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"
    transient = True


class NodeUnavailable(Unavailable):
    """No live node serves the model: the coordinator's answer, not an outage."""

    reason = "NO_NODE_AVAILABLE"
    transient = False

    def __init__(self, message: str, model: str = "") -> None:
        super().__init__(message)
        self.model = model

    def info(self) -> dict[str, str]:
        return {"model": self.model} if self.model else {}

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        return cls(message, info.get("model", ""))


class Unreachable(Unavailable):
    """No server answered: the connection was refused, the host did not resolve, the TLS
    handshake failed. `target` says what was dialled ("the coordinator at host:port"),
    `cause` why it failed ("connection refused").

    Only the caller that dialled can know this. A server that raises it (it could not reach
    a dependency) sends reason UNREACHABLE with `target` and `cause`; its caller did reach a
    server, so it rebuilds plain `Unavailable` with the same message."""

    reason = "UNREACHABLE"

    def __init__(self, target: str, cause: str) -> None:
        super().__init__(f"cannot reach {target} ({cause})")
        self.target = target
        self.cause = cause

    def info(self) -> dict[str, str]:
        return {"target": self.target, "cause": self.cause}

    @classmethod
    def rebuild(
        cls, message: str, info: Mapping[str, str], status: status_pb2.Status
    ) -> TroopError:
        return Unavailable(message)


# Every class a reason names, in the order of the tree; a reason names one class only.
ERROR_CLASSES: tuple[type[TroopError], ...] = (
    TroopError,
    InvalidArgument,
    AuthError,
    TicketInvalid,
    TicketReused,
    AssertionInvalid,
    SignatureInvalid,
    PresentationMissing,
    NodeProofInvalid,
    PermissionDenied,
    PresentationInvalid,
    NotFound,
    FailedPrecondition,
    InsufficientCredits,
    RateLimited,
    Unavailable,
    NodeUnavailable,
    Unreachable,
)
_BY_REASON: dict[str, type[TroopError]] = {cls.reason: cls for cls in ERROR_CLASSES}
assert len(_BY_REASON) == len(ERROR_CLASSES), "two error classes declare the same reason"

# What gRPC's own transport (not a server) puts in the details of a call that never
# reached a server, and the cause as a person would say it. Not "Socket closed": that is a
# connection that was up and broke (a worker dying mid-stream), plain Unavailable; a
# connection that closed while being set up says "failed to connect to all addresses".
_TRANSPORT_FAILURES = (
    ("Connection refused", "connection refused"),
    ("DNS resolution failed", "the host name does not resolve"),
    ("errors resolving", "the host name does not resolve"),
    ("andshake failed", "the TLS handshake failed"),
    # The connect timeout passed (troop_common.resilience.connect_options): a peer that
    # accepted the connection but never spoke HTTP/2, or one that never accepted it.
    ("timed out before receiving SETTINGS", "no answer within the connect timeout"),
    ("failed to connect to all addresses", "no address accepted a connection"),
)


def _unreachable_cause(details: str) -> str | None:
    for marker, cause in _TRANSPORT_FAILURES:
        if marker in details:
            return cause
    return None


@dataclass(frozen=True)
class Status:
    """What a server aborts with: code, message and trailing metadata (rich details inside)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def to_status(error: TroopError) -> Status:
    """The rich gRPC status for a domain error: its ErrorInfo, then its other details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in [error.error_info(), *error.details()]:
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
    # The call's deadline passed or it was cancelled: nothing was decided.
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def from_rpc_error(exc: grpc.aio.AioRpcError | grpc.RpcError, target: str = "") -> TroopError:
    """The domain error a failed call stands for (clients raise it `from exc`).

    A status with a Troop ErrorInfo becomes exactly the class its reason names, with its
    fields. Without one (the status came from Envoy or grpc itself), the code decides: a call
    that never reached a server becomes `Unreachable`, named by `target` ("the coordinator at
    host:port"); a connection that broke after it was up (e.g. "Socket closed" mid-stream)
    is plain `Unavailable`.
    """
    code = exc.code()
    message = exc.details() or code.name
    status = _rich_status(exc)
    if status is not None:
        rebuilt = _from_error_info(code, message, status)
        if rebuilt is not None:
            return rebuilt
    if code == grpc.StatusCode.UNAVAILABLE:
        cause = _unreachable_cause(message)
        if cause is not None:
            return Unreachable(target or "the server", cause)
        if "Socket closed" in message and target:
            return Unavailable(f"the connection to {target} broke during the call ({message})")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _with_message(
            InvalidArgument(_violations(status) or [FieldViolation("", message)]), message
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(message, _retry_delay(status))
    return _BY_CODE.get(code, TroopError)(message)


def _from_error_info(
    code: grpc.StatusCode, message: str, status: status_pb2.Status
) -> TroopError | None:
    for info in _unpack(status, error_details_pb2.ErrorInfo):
        cls = _BY_REASON.get(info.reason) if info.domain == DOMAIN else None
        if cls is None or cls.code != code:
            continue  # another domain's, a reason newer than this client, or a mismatch
        try:
            error = cls.rebuild(message, info.metadata, status)
        except (KeyError, ValueError):
            return None  # metadata this client cannot read: the code decides
        return _with_message(error, message)
    return None


def _with_message(error: TroopError, message: str) -> TroopError:
    """`error` saying exactly what the server said."""
    error.message = message
    error.args = (message,)
    return error


def _violations(status: status_pb2.Status | None) -> list[FieldViolation]:
    return [
        FieldViolation(v.field, v.description)
        for d in _unpack(status, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


def _retry_delay(status: status_pb2.Status | None) -> float:
    retry = 0.0
    for info in _unpack(status, error_details_pb2.RetryInfo):
        retry = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return retry


def _rich_status(exc: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(exc)
    except (ValueError, AttributeError, TypeError):
        return None


def _unpack(status: status_pb2.Status | None, kind: type[Any]) -> list[Any]:
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
    "DOMAIN",
    "ERROR_CLASSES",
    "AssertionInvalid",
    "AuthError",
    "FailedPrecondition",
    "FieldViolation",
    "InsufficientCredits",
    "InvalidArgument",
    "NodeProofInvalid",
    "NodeUnavailable",
    "NotFound",
    "PermissionDenied",
    "PresentationInvalid",
    "PresentationMissing",
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

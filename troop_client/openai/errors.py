"""Troop errors as OpenAI errors: the HTTP status and the `{"error": {...}}` body.

Before the first byte of a response, an error leaves the servicer as an
`OpenAIErrorResponse` (a TroopError with the cause's gRPC code): the error
interceptor turns it into a trailers-only status, and the sidecar's Envoy
replaces the body with the OpenAI JSON from the `x-troop-openai-error` trailer
and the status with `x-troop-http-status`. After the stream started, the same
JSON travels as an SSE event (see `responses.error_event`).

| Troop error          | HTTP | type                   | code                 |
|----------------------|------|------------------------|----------------------|
| InvalidArgument      | 400  | invalid_request_error  | invalid_value        |
| AuthError            | 401  | authentication_error   | invalid_api_key      |
| PermissionDenied     | 403  | permission_error       | permission_denied    |
| NotFound             | 404  | not_found_error        | not_found            |
| InsufficientCredits  | 402  | insufficient_quota     | insufficient_credits |
| FailedPrecondition   | 400  | invalid_request_error  | failed_precondition  |
| RateLimited          | 429  | rate_limit_error       | rate_limit_exceeded  |
| NodeUnavailable      | 503  | service_unavailable    | no_node_available    |
| Unavailable          | 503  | service_unavailable    | unavailable          |
| anything else        | 500  | server_error           | internal_error       |
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf.message import Message
from google.rpc import error_details_pb2

from troop_common.envoy import LocalReplyFormat
from troop_common.errors import (
    AuthError,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NodeUnavailable,
    NotFound,
    PermissionDenied,
    RateLimited,
    TroopError,
    Unavailable,
)

ERROR_BODY_HEADER = "x-troop-openai-error"
HTTP_STATUS_HEADER = "x-troop-http-status"

# Most specific first: InsufficientCredits before FailedPrecondition, etc.
_TABLE: list[tuple[type[TroopError], int, str, str]] = [
    (InvalidArgument, 400, "invalid_request_error", "invalid_value"),
    (AuthError, 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (NotFound, 404, "not_found_error", "not_found"),
    (InsufficientCredits, 402, "insufficient_quota", "insufficient_credits"),
    (FailedPrecondition, 400, "invalid_request_error", "failed_precondition"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (NodeUnavailable, 503, "service_unavailable", "no_node_available"),
    (Unavailable, 503, "service_unavailable", "unavailable"),
]


@dataclass(frozen=True)
class OpenAIError:
    """An error as OpenAI clients read it."""

    status: int
    message: str
    type: str
    code: str
    param: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> str:
        # ASCII only: the JSON also travels as a gRPC metadata value.
        return json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))


def openai_error(error: BaseException) -> OpenAIError:
    """The OpenAI error for any exception (a non-Troop one says only "internal error")."""
    if isinstance(error, TroopError):
        for cls, status, kind, code in _TABLE:
            if isinstance(error, cls):
                param = None
                if isinstance(error, InvalidArgument) and error.violations:
                    param = error.violations[0].field or None
                return OpenAIError(status, error.message, kind, code, param)
    return OpenAIError(500, "internal error", "server_error", "internal_error")


def _envoy_reply(status: int, kind: str, code: str) -> dict[str, object]:
    return OpenAIError(status, "%LOCAL_REPLY_BODY%", kind, code).to_dict()


# What Envoy answers by itself (a body that is not JSON or not the request's shape, a
# path no route serves, this sidecar's gRPC server gone) in the same shape as the rest.
ENVOY_LOCAL_REPLY = LocalReplyFormat(
    default=_envoy_reply(400, "invalid_request_error", "invalid_request"),
    by_status={404: _envoy_reply(404, "invalid_request_error", "unknown_url")},
    server_error=_envoy_reply(503, "service_unavailable", "unavailable"),
)


class OpenAIErrorResponse(TroopError):
    """A TroopError that also carries its OpenAI face in trailers, for the sidecar's Envoy."""

    def __init__(self, cause: TroopError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.code = cause.code
        self.openai = openai_error(cause)

    def error_info(self) -> error_details_pb2.ErrorInfo:
        return self.cause.error_info()  # the cause's reason and fields, not "INTERNAL"

    def details(self) -> list[Message]:
        return self.cause.details()

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return [
            *self.cause.trailing_metadata(),
            (ERROR_BODY_HEADER, self.openai.to_json()),
            (HTTP_STATUS_HEADER, str(self.openai.status)),
        ]


__all__ = [
    "ENVOY_LOCAL_REPLY",
    "ERROR_BODY_HEADER",
    "HTTP_STATUS_HEADER",
    "OpenAIError",
    "OpenAIErrorResponse",
    "openai_error",
]

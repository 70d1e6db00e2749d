"""Troop's client: the async SDK, its typed results and errors, and the OpenAI face."""

from troop_client.chat import ChatChunk, ChatOptions, Completion, Message, Usage
from troop_client.evidence import VerifiedEvidence
from troop_client.results import (
    Balance,
    Grant,
    Job,
    Joined,
    ModelOffer,
    Node,
    Page,
    Transaction,
)
from troop_client.sdk import TroopClient
from troop_client.settings import ClientSettings
from troop_common.errors import (
    AuthError,
    FailedPrecondition,
    InsufficientCredits,
    InvalidArgument,
    NodeProofInvalid,
    NodeUnavailable,
    NotFound,
    PermissionDenied,
    RateLimited,
    TroopError,
    Unavailable,
    Unreachable,
)

__all__ = [
    "AuthError",
    "Balance",
    "ChatChunk",
    "ChatOptions",
    "ClientSettings",
    "Completion",
    "FailedPrecondition",
    "Grant",
    "InsufficientCredits",
    "InvalidArgument",
    "Job",
    "Joined",
    "Message",
    "ModelOffer",
    "Node",
    "NodeProofInvalid",
    "NodeUnavailable",
    "NotFound",
    "Page",
    "PermissionDenied",
    "RateLimited",
    "Transaction",
    "TroopClient",
    "TroopError",
    "Unavailable",
    "Unreachable",
    "Usage",
    "VerifiedEvidence",
]

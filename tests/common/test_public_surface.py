"""The SDK's public surface is pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import troop_client
from troop_client import TroopClient
from troop_common import errors


def test_the_sdk_exports_exactly_its_public_names() -> None:
    assert sorted(troop_client.__all__) == [
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
    for name in troop_client.__all__:
        assert getattr(troop_client, name).__doc__, f"{name} has no docstring"


def test_every_kind_of_failure_has_a_class_to_catch_in_troop_client() -> None:
    exported = [getattr(troop_client, name) for name in troop_client.__all__]
    raised = [cls for cls in exported if isinstance(cls, type) and issubclass(cls, Exception)]
    # The very classes the SDK raises (troop_common's), not copies that `except` would miss.
    assert raised and all(cls in errors.ERROR_CLASSES for cls in raised)
    for cls in errors.ERROR_CLASSES:
        if cls.__bases__ == (errors.TroopError,):  # one per status code
            assert cls in raised, f"{cls.__name__} is not exported"


def _protobuf_in(annotation: object, seen: set[object]) -> list[str]:
    """The protobuf types an annotation mentions, also inside the SDK's own dataclasses."""
    if annotation in seen:
        return []
    seen.add(annotation)
    module = getattr(annotation, "__module__", "")
    if module.endswith("_pb2") or module.startswith("google.protobuf"):
        return [repr(annotation)]
    inner = list(typing.get_args(annotation))
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        inner += typing.get_type_hints(annotation).values()
    return [found for arg in inner for found in _protobuf_in(arg, seen)]


def test_no_public_sdk_method_takes_or_returns_protobuf() -> None:
    methods = {
        name: member
        for name, member in inspect.getmembers(TroopClient, inspect.isfunction)
        if not name.startswith("_")
    }
    assert {"authorize", "balance", "chat", "history", "job", "join", "models", "nodes"} <= set(
        methods
    )
    for name, method in methods.items():
        for where, annotation in typing.get_type_hints(method).items():
            found = _protobuf_in(annotation, set())
            assert not found, f"TroopClient.{name} ({where}) mentions {found}"

"""The SDK's public surface is pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import troop_client


def test_the_sdk_exports_exactly_its_public_names() -> None:
    assert sorted(troop_client.__all__) == [
        "Balance",
        "ChatChunk",
        "ChatOptions",
        "ClientSettings",
        "Completion",
        "Job",
        "Message",
        "ModelOffer",
        "TroopClient",
        "Usage",
    ]
    for name in troop_client.__all__:
        assert getattr(troop_client, name).__doc__, f"{name} has no docstring"

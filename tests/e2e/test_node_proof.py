"""The client refuses a worker that cannot prove it is the node its ticket names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from troop_client import ChatOptions, Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.node_proof import NodeProofInvalid
from troop_worker.app import Worker
from troop_worker.settings import WorkerSettings
from troop_worker.tickets import TicketVerifier

MODEL = "smollm2-135m-instruct"


async def test_an_impostor_at_the_nodes_address_gets_no_token_through(
    network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with CoordinatorClient(network.coordinator) as anonymous:
        (victim,) = (await anonymous.list_nodes()).nodes
    # Another process claims the victim's node id (it can verify the victim's tickets:
    # the ticket key is public) and traffic for the victim's address reaches it. A
    # modified worker, too: it skips the ticket's node_key check (which an honest worker
    # makes: tests/security), so the client's node proof is the line that holds.
    monkeypatch.setattr(
        "troop_worker.app.TicketVerifier",
        lambda keys, *, node_id, node_key=None, **kw: TicketVerifier(keys, node_id=node_id, **kw),
    )
    impostor_settings = dataclasses.replace(
        WorkerSettings.from_env({}),
        port=0,
        coordinator=network.coordinator,
        data_dir=tmp_path / "impostor",
        node_id=victim.node_id,
        engine="fake",
    )
    async with (
        Worker(impostor_settings) as impostor,
        TroopClient(network.coordinator, Identity.generate()) as user,
    ):
        grant = await user.authorize(MODEL)
        hijacked = dataclasses.replace(grant, endpoint=impostor.address)
        received = []
        with pytest.raises(NodeProofInvalid):
            async for chunk in user._stream(
                hijacked, [Message("user", "secret prompt")], MODEL, ChatOptions(), "rid-1"
            ):
                received.append(chunk)
        assert received == []

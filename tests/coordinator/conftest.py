"""Coordinator fixtures: a real coordinator on port 0, on the test's own event loop.

`settings` runs on both backends through the shared `database_url` fixture;
`network` makes users and heartbeating nodes that talk to it through the real
CoordinatorClient.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.conftest import signed_receipt
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

MODEL = "smollm2-135m-instruct"


def make_data_dir(path: Path, pem: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    key_file = path / "ticket-key.pem"
    if not key_file.exists():
        key_file.write_bytes(pem)
        os.chmod(key_file, 0o400)
    return path


@pytest.fixture
def settings(database_url: str, tmp_path: Path, ticket_key_pem: bytes) -> CoordinatorSettings:
    return CoordinatorSettings(
        host="127.0.0.1",
        port=0,
        data_dir=make_data_dir(tmp_path / "coordinator", ticket_key_pem),
        database_url=database_url,
        starter_credits=3600,
        ticket_ttl_s=300,
        heartbeat_interval_s=5,
        node_ttl_s=15.0,
        sweep_interval_s=3600.0,  # tests that need the sweeper shorten it
        settle_grace_s=0.0,  # tests that need a grace period set it
        # These nodes are identities with made-up endpoints (no worker behind them): the
        # endpoint proof is off here and tested with real workers (tests/security).
        verify_node_endpoints=False,
        shutdown_grace_s=0.5,
    )


@pytest.fixture
async def coordinator(settings: CoordinatorSettings) -> AsyncIterator[Coordinator]:
    async with Coordinator(settings) as running:
        yield running


@dataclass
class Node:
    node_id: str
    identity: Identity
    owner: Identity
    client: CoordinatorClient

    async def heartbeat(self, models: list[str] | None = None, **load: int) -> pb.HeartbeatResponse:
        return await self.client.heartbeat(
            pb.HeartbeatRequest(
                node_id=self.node_id,
                endpoint="127.0.0.1:50099",
                models=models or [MODEL],
                load=pb.NodeLoad(**load),
                hardware=pb.NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
                owner_public_key=self.owner.public_key_hex,
            )
        )

    def receipt(
        self,
        job: pb.AuthorizeResponse | str,
        user: CoordinatorClient | None = None,
        *,
        outcome: int = pb.JOB_OUTCOME_COMPLETED,
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        duration_ms: int = 1000,
        node_id: str | None = None,
        signer: Identity | None = None,
    ) -> pb.SubmitReceiptRequest:
        """A receipt for `job` carrying `user`'s presentation (none without a user)."""
        job_id = job if isinstance(job, str) else job.job_id
        return signed_receipt(
            signer or self.identity,
            job_id,
            node_id or self.node_id,
            None if user is None else user.identity,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            outcome=outcome,
            duration_ms=duration_ms,
        )


class Network:
    """Users and nodes of one coordinator; closes their channels at teardown."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._clients: list[CoordinatorClient] = []
        self._count = 0

    def client(self, identity: Identity | None = None) -> CoordinatorClient:
        client = CoordinatorClient(self.address, identity or Identity.generate())
        self._clients.append(client)
        return client

    def user(self) -> CoordinatorClient:
        return self.client()

    async def node(self, models: list[str] | None = None, node_id: str = "", **load: int) -> Node:
        self._count += 1
        identity = Identity.generate()
        node = Node(
            node_id=node_id or f"node-{self._count}",
            identity=identity,
            owner=Identity.generate(),
            client=self.client(identity),
        )
        await node.heartbeat(models, **load)
        return node

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


@pytest.fixture
async def network(coordinator: Coordinator) -> AsyncIterator[Network]:
    net = Network(coordinator.address)
    yield net
    await net.close()


Launch = Callable[..., Awaitable[tuple[Coordinator, "Network"]]]


@pytest.fixture
async def launch(settings: CoordinatorSettings) -> AsyncIterator[Launch]:
    """Start more coordinators (other settings, or replicas on the same database)."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: object) -> tuple[Coordinator, Network]:
            running = await stack.enter_async_context(Coordinator(replace(settings, **overrides)))
            net = Network(running.address)
            stack.push_async_callback(net.close)
            return running, net

        yield start

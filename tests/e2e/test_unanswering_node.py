"""A node that accepts connections but never answers, as the SDK meets it: the real
coordinator grants jobs on it; dialling it gives up after the client's connect timeout (not
the 300 s inference timeout), the next grant for it is skipped by its breaker without
dialling, and neither job keeps a reservation."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import pytest

from troop_client import ClientSettings, Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import Unavailable, Unreachable
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

STARTER = 3_600_000
MODEL = "smollm2-135m-instruct"


async def test_a_node_that_never_answers_is_given_up_on_time_then_skipped_by_its_breaker(
    tmp_path: Path, silent_address: str, eventually
) -> None:
    settings = dataclasses.replace(
        CoordinatorSettings.from_env({}),
        port=0,
        data_dir=tmp_path / "coordinator",
        # The ghost stands for a node that proved its endpoint, then stopped answering.
        verify_node_endpoints=False,
        node_ttl_s=600.0,  # one heartbeat keeps it listed for the whole test
    )
    async with Coordinator(settings) as coordinator:
        ghost = Identity.generate()
        async with CoordinatorClient(coordinator.address, ghost) as ghost_client:
            await ghost_client.heartbeat(
                pb.HeartbeatRequest(
                    node_id="ghost", endpoint=silent_address, models=[MODEL],
                    load=pb.NodeLoad(max_concurrent_jobs=4),
                    owner_public_key=ghost.public_key_hex,
                )
            )  # fmt: skip
        client_settings = ClientSettings.from_env(
            {
                "TROOP_COORDINATOR": coordinator.address,
                "TROOP_CONNECT_TIMEOUT_SECONDS": "0.5",
                "TROOP_BREAKER_FAILURES": "1",
                "TROOP_BREAKER_COOLDOWN_SECONDS": "600",
            }
        )
        async with TroopClient(coordinator.address, Identity.generate(), client_settings) as user:
            await user.join()
            with pytest.raises(Unreachable) as first:
                # Well before gRPC's own 20 s connect bound and the 300 s inference timeout.
                await asyncio.wait_for(user.complete([Message("user", "hi")]), 10)
            assert first.value.message == (
                f"cannot reach node ghost at {silent_address} "
                "(no answer within the connect timeout)"
            )
            # Its one transport failure opened the breaker: the next grant is not dialled.
            opened = f"the node at {re.escape(silent_address)} is unreachable \\(circuit open"
            with pytest.raises(Unavailable, match=opened):
                await user.complete([Message("user", "hi")])

            async def nothing_is_reserved() -> bool:
                return (await user.balance()).reserved_millicredits == 0

            # Both jobs were countersigned 0 at once: their reservations came back whole.
            await eventually(nothing_is_reserved, timeout_s=20)
            assert (await user.balance()).balance_millicredits == STARTER
            reserves = [t for t in (await user.history()).items if t.kind == "reserve"]
            assert len(reserves) == 2

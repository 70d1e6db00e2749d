"""The worker's heartbeat against a real (stand-in) coordinator: a beat the coordinator never
answers fails within the interval, not the 30 s request timeout (so a hung call cannot
outlast the node TTL); transport failures open the heartbeat's breaker and beats then stop
reaching the coordinator; refusals are answers and never open it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from recording_coordinator import RecordingCoordinator, start_server
from worker_testing import MODEL, worker_settings

from troop_common.errors import PermissionDenied, Unavailable
from troop_common.resilience import ResilienceSettings
from troop_common.tickets import TicketSigner
from troop_worker import Worker
from troop_worker.engine import FakeEngine

# The defaults' request timeout (30 s); two failed beats open the breaker for long.
RESILIENCE = ResilienceSettings(breaker_failures=2, breaker_cooldown_s=600)


@dataclass
class StubbornCoordinator(RecordingCoordinator):
    """Serves its keys, but never answers a heartbeat (`refuse`: refuses every one)."""

    refuse: bool = False
    beats: int = 0

    async def Heartbeat(self, request, context):
        self.beats += 1
        if self.refuse:
            raise PermissionDenied("this node is not admitted")
        await asyncio.Event().wait()  # until the caller's deadline cancels it


@asynccontextmanager
async def worker_against(coordinator: StubbornCoordinator, tmp_path: Path) -> AsyncIterator[Worker]:
    server = start_server(coordinator)
    async with server:
        settings = worker_settings(
            tmp_path, server.address, heartbeat_interval_s=0.2, resilience=RESILIENCE
        )
        async with Worker(settings, engine=FakeEngine([MODEL])) as worker:
            yield worker


async def test_unanswered_beats_fail_within_the_interval_and_open_the_breaker(
    tmp_path: Path, ticket_signer: TicketSigner, eventually
) -> None:
    coordinator = StubbornCoordinator(signers=[ticket_signer])
    async with worker_against(coordinator, tmp_path) as worker:
        beats = worker.heartbeats
        assert beats is not None
        # Two beats of a 30 s request timeout would take a minute: each ends at its deadline.
        await eventually(lambda: beats.breaker.state == "open", timeout_s=15)
        with pytest.raises(Unavailable, match="circuit open after 2 failures"):
            await beats.beat()  # refused here, before dialling
        assert coordinator.beats <= 2  # never more than the failures that opened it
        assert beats.sent == 0


async def test_refused_beats_are_answers_and_keep_the_breaker_closed(
    tmp_path: Path, ticket_signer: TicketSigner, eventually
) -> None:
    coordinator = StubbornCoordinator(signers=[ticket_signer], refuse=True)
    async with worker_against(coordinator, tmp_path) as worker:
        beats = worker.heartbeats
        assert beats is not None
        await eventually(lambda: coordinator.beats >= 4, timeout_s=15)  # past the threshold
        assert beats.breaker.state == "closed"
        with pytest.raises(PermissionDenied):
            await beats.beat()  # still asked, still refused

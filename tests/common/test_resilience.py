"""Retries ride out a coordinator that comes back; the breaker stops hammering one that doesn't."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.conftest import free_port
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import InvalidArgument, Unavailable, Unreachable
from troop_common.keys import Identity
from troop_common.resilience import CircuitBreaker, RetryPolicy
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_with_jitter() -> None:
    delays = list(RetryPolicy(retries=3, base_delay_s=1.0, jitter=0.2).delays())
    assert len(delays) == 3
    for delay, base in zip(delays, (1, 2, 4), strict=True):
        assert 0.8 * base <= delay <= 1.2 * base


def test_the_breaker_opens_after_five_failures_and_half_opens_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("the coordinator", threshold=5, cooldown_s=60, clock=clock)
    for _ in range(4):
        breaker.record_failure()
        breaker.before_call()  # still closed
    breaker.record_failure()
    with pytest.raises(Unavailable, match="circuit open"):
        breaker.before_call()
    clock.now = 61
    breaker.before_call()  # half-open: one trial
    breaker.record_failure()  # the trial failed: open again at once
    with pytest.raises(Unavailable):
        breaker.before_call()
    clock.now = 122
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"


async def test_an_idempotent_call_rides_out_a_coordinator_that_comes_back(
    tmp_path: Path, monkeypatch
) -> None:
    backing_off = asyncio.Event()  # set when the client waits to retry a failed attempt
    sleep = asyncio.sleep

    async def backoff(delay: float) -> None:
        backing_off.set()
        await sleep(delay)

    monkeypatch.setattr("troop_common.coordinator_client.asyncio.sleep", backoff)
    port = free_port()
    settings = dataclasses.replace(
        CoordinatorSettings.from_env({}), port=port, data_dir=tmp_path / "coordinator"
    )
    client = CoordinatorClient(
        f"127.0.0.1:{port}", Identity.generate(), retry=RetryPolicy(base_delay_s=0.3)
    )
    try:
        call = asyncio.create_task(client.get_balance())  # nothing listens yet
        await asyncio.wait_for(backing_off.wait(), 10)  # its first attempt failed
        async with Coordinator(settings):
            reply = await asyncio.wait_for(call, 30)
        assert reply.balance_millicredits == 0
    finally:
        await client.close()


async def test_spending_is_never_retried_and_refusals_are_not_retried(monkeypatch) -> None:
    backoffs: list[float] = []

    async def record(delay: float) -> None:
        backoffs.append(delay)

    monkeypatch.setattr("troop_common.coordinator_client.asyncio.sleep", record)
    client = CoordinatorClient(
        f"127.0.0.1:{free_port()}", Identity.generate(), retry=RetryPolicy(base_delay_s=5)
    )
    try:
        with pytest.raises(Unavailable):
            await client.authorize("m")  # a retry could reserve twice: one try only
        assert backoffs == []
        with pytest.raises(Unavailable):
            await client.list_models()  # a read is retried after a transport failure
        assert len(backoffs) == RetryPolicy().retries
    finally:
        await client.close()


async def test_a_coordinator_nobody_answers_for_is_named_in_the_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    client = CoordinatorClient(address, Identity.generate(), retry=RetryPolicy(retries=0))
    try:
        with pytest.raises(Unreachable) as caught:
            await client.get_balance()
    finally:
        await client.close()
    assert caught.value.message == f"cannot reach the coordinator at {address} (connection refused)"


async def test_an_open_breaker_fails_at_once_and_a_refusal_keeps_it_closed(
    tmp_path: Path,
) -> None:
    breaker = CircuitBreaker("the coordinator", threshold=2, cooldown_s=60)
    dead = CoordinatorClient(
        f"127.0.0.1:{free_port()}", Identity.generate(), retry=RetryPolicy(retries=0),
        breaker=breaker,
    )  # fmt: skip
    try:
        for _ in range(2):
            with pytest.raises(Unavailable) as refused:
                await dead.list_models()
            assert "circuit open" not in refused.value.message  # a real connection failure
        with pytest.raises(Unavailable, match="circuit open"):
            await dead.list_models()
    finally:
        await dead.close()

    settings = dataclasses.replace(
        CoordinatorSettings.from_env({}), port=0, data_dir=tmp_path / "coordinator"
    )
    async with Coordinator(settings) as coordinator:
        refusals = CircuitBreaker("the coordinator", threshold=2)
        client = CoordinatorClient(coordinator.address, Identity.generate(), breaker=refusals)
        try:
            for _ in range(3):
                with pytest.raises(InvalidArgument):
                    await client.get_balance("not-a-key")
            assert refusals.state == "closed"  # it answered: it is up
        finally:
            await client.close()

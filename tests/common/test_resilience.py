"""Retries ride out a coordinator that comes back; the breaker stops hammering one that doesn't;
dialling a peer that never answers gives up after the connect timeout, as set."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.conftest import free_port
from troop_client import ClientSettings, Message, TroopClient
from troop_common.config import ConfigError
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import InvalidArgument, Unavailable, Unreachable
from troop_common.keys import Identity
from troop_common.resilience import NO_RETRY, CircuitBreaker, ResilienceSettings, RetryPolicy
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.engine.fake import FakeEngine

MODEL = "smollm2-135m-instruct"


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


def test_a_loop_that_tries_until_it_goes_waits_at_most_its_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, jitter=0.2, max_delay_s=5.0)
    assert 0.8 <= policy.delay(0) <= 1.2
    assert all(4.0 <= policy.delay(attempt) <= 6.0 for attempt in (3, 10, 1000))


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


async def test_a_peer_that_never_answers_is_unreachable_after_the_connect_timeout(
    silent_address: str,
) -> None:
    # It accepts the connection and never speaks: only a timeout ends the call.
    client = CoordinatorClient(
        silent_address, Identity.generate(), retry=NO_RETRY, timeout_s=120, connect_timeout_s=0.5
    )
    try:
        with pytest.raises(Unreachable) as caught:
            # Far less than the request timeout, and than gRPC's own 20 s connect bound.
            await asyncio.wait_for(client.list_models(), 10)
    finally:
        await client.close()
    assert caught.value.message == (
        f"cannot reach the coordinator at {silent_address} (no answer within the connect timeout)"
    )


async def test_the_client_takes_its_connect_timeout_and_breaker_from_the_environment(
    silent_address: str,
) -> None:
    settings = ClientSettings.from_env(
        {
            "TROOP_COORDINATOR": silent_address,
            "TROOP_CONNECT_TIMEOUT_SECONDS": "0.5",
            "TROOP_BREAKER_FAILURES": "1",
            "TROOP_BREAKER_COOLDOWN_SECONDS": "600",
        }
    )
    async with TroopClient(silent_address, Identity.generate(), settings) as client:
        with pytest.raises(Unreachable, match="no answer within the connect timeout"):
            await asyncio.wait_for(client.authorize(), 10)
        # One transport failure opened the breaker: the next call fails at once, undialled.
        with pytest.raises(
            Unavailable, match=r"circuit open after 1 failures\); trying again in 600 s"
        ):
            await client.authorize()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("TROOP_CONNECT_TIMEOUT_SECONDS", "soon", "must be a number, got 'soon'"),
        ("TROOP_REQUEST_TIMEOUT_SECONDS", "0", "must be positive"),
        ("TROOP_INFERENCE_TIMEOUT_SECONDS", "inf", "must be a finite number"),
        ("TROOP_BREAKER_FAILURES", "0", "must be at least 1"),
    ],
)
def test_an_unusable_timeout_or_breaker_setting_is_refused_by_name(
    variable: str, value: str, said: str
) -> None:
    with pytest.raises(ConfigError, match=f"{variable} {said}"):
        ClientSettings.from_env({variable: value})


class SlowToStart(FakeEngine):
    """The fake engine after a long prefill: nothing for `prefill_s`, then the words."""

    def __init__(self, prefill_s: float) -> None:
        super().__init__([MODEL], delay_s=0.01)
        self.prefill_s = prefill_s

    async def stream(self, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.prefill_s)  # the engine computing, not a test waiting
        async for chunk in super().stream(request):
            yield chunk


async def test_a_worker_silent_through_a_long_prefill_takes_the_clients_keepalive_pings(
    start_mesh, tmp_path: Path
) -> None:
    # Pings every second through 8 s without a data frame: a gRPC server's default policy
    # answers the third past its first with GOAWAY (too_many_pings, about 6 s in); a Troop
    # server takes them (ADR 55).
    async with start_mesh(engine=SlowToStart(prefill_s=8)) as mesh:
        settings = ClientSettings(
            coordinator=mesh.coordinator,
            config_dir=tmp_path / "client",
            resilience=ResilienceSettings(keepalive_s=1.0),
        )
        async with TroopClient(mesh.coordinator, Identity.generate(), settings) as client:
            answer = await client.complete([Message("user", "after a long prefill")])
    assert answer.text == "You said: after a long prefill"

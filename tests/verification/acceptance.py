"""A verified network of real processes, for issue 15's acceptance tests: a coordinator
on this test's PostgreSQL that trusts the test's verifier key, workers on the built-in
engine (the shipped GGUF or a cheat built from it) or relaying to llama.cpp, and the
verifier in the test process with a few joined users' SDK clients.

    coordinator = await verified_coordinator(network)
    torch_worker(network, coordinator.address, "honest")
    async with users(coordinator.address, 3) as clients:
        node = await listed(clients[0], "honest")
        verifier = Verifier(clients, scorer, VERIFIER, rng=random.Random(15))
        checks = await run_checks(verifier, node, 100, concurrency=4)
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from tests.conftest import wait_until
from tests.state.conftest import Network, Process
from troop_client.results import Node
from troop_client.sdk import TroopClient
from troop_common.keys import Identity
from troop_coordinator.admin import read_audit
from troop_coordinator.ledger import AuditReport
from troop_coordinator.settings import CoordinatorSettings
from troop_verifier.jobs import VerificationJob, draw_job
from troop_verifier.runner import Check, Verifier

MODEL = "smollm2-135m-instruct"
VERIFIER = Identity.generate()  # the verifier's key, listed in TROOP_VERIFIER_KEYS
# The verifier's own job generator, with max_tokens capped to keep the suite's CPU time
# down (it draws 32-128; the thresholds hold per position, measured at 48: docs/adr/0052).
MAX_TOKENS = 32
# A worker on the built-in engine loads the model (~20 s alone on 2 shared cores).
START_S = 240.0


async def verified_coordinator(network: Network, **settings: str) -> Process:
    """The coordinator process, acting on VERIFIER's verdicts. Its per-user Authorize
    limit (20 an hour) is lifted: a hundred checks from three identities would pass it."""
    return await network.coordinator(
        TROOP_VERIFIER_KEYS=VERIFIER.public_key_hex, TROOP_RATE_LIMITS="", **settings
    )


def torch_worker(
    network: Network, coordinator: str, name: str, model_path: Path | None = None
) -> Process:
    """A worker process on the built-in engine, serving MODEL from `model_path` (the
    shipped GGUF by default; a cheat claims the real model's name)."""
    env = {"TROOP_WORKER_ENGINE": "torch"}
    if model_path is not None:
        env["TROOP_WORKER_MODEL_PATH"] = str(model_path)
    return network.fake_worker(coordinator, name, **env)


def relay_worker(network: Network, coordinator: str, name: str, upstream: str) -> Process:
    """A worker process relaying MODEL to an OpenAI-compatible server (llama.cpp's)."""
    from bench.llama_cpp import ALIAS

    return network.fake_worker(
        coordinator,
        name,
        TROOP_WORKER_ENGINE="openai",
        TROOP_WORKER_UPSTREAM_URL=upstream,
        TROOP_WORKER_UPSTREAM_MODEL=ALIAS,
    )


@asynccontextmanager
async def users(coordinator: str, count: int) -> AsyncIterator[list[TroopClient]]:
    """`count` SDK clients of new identities, joined (starter credits)."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            client = await stack.enter_async_context(TroopClient(coordinator, Identity.generate()))
            await client.join()
            clients.append(client)
        yield clients


async def listed(client: TroopClient, node_id: str, *workers: Process) -> Node:
    """The node once the coordinator lists it under MODEL (its model loaded); fails with
    the workers' logs when one exits first or it is not listed in time."""

    async def found() -> Node | None:
        for worker in workers:
            assert worker.popen.poll() is None, worker.output()
        return next((n for n in await client.nodes(MODEL) if n.node_id == node_id), None)

    try:
        return await wait_until(found, timeout_s=START_S, interval_s=0.5)
    except BaseException:
        for worker in workers:
            print(worker.output()[-4000:])
        raise


async def node_record(client: TroopClient, node_id: str) -> Node:
    """The node as ListNodes (every model) shows it, with its verification record."""
    return next(n for n in await client.nodes() if n.node_id == node_id)


def capped_job(rng: random.Random) -> VerificationJob:
    """A job from the verifier's generator, max_tokens capped at MAX_TOKENS."""
    job = draw_job(rng)
    return dataclasses.replace(job, max_tokens=min(job.max_tokens, MAX_TOKENS))


async def run_checks(
    verifier: Verifier, node: Node, count: int, *, concurrency: int
) -> list[Check]:
    """`count` checks of `node`, `concurrency` at a time, jobs drawn in order by the
    verifier's generator (so a seed repeats them)."""
    jobs = [capped_job(verifier.rng) for _ in range(count)]
    slots = asyncio.Semaphore(concurrency)

    async def one(job: VerificationJob) -> Check:
        async with slots:
            return await verifier.check_once(node, MODEL, job)

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def settled(clients: Sequence[TroopClient], job_ids: Sequence[str]) -> None:
    """Wait until every job has settled (the users' countersignatures are in)."""

    async def all_settled() -> bool:
        for client in clients:
            await client.drain_reports(2.0)
        for job_id in job_ids:
            if not await _settled(clients, job_id):
                return False
        return True

    await wait_until(all_settled, timeout_s=60, interval_s=0.2)


async def _settled(clients: Sequence[TroopClient], job_id: str) -> bool:
    from troop_common.errors import NotFound, PermissionDenied

    for client in clients:  # a job is visible to its own user only
        try:
            return (await client.job(job_id)).settled
        except (NotFound, PermissionDenied):
            continue
    raise AssertionError(f"no user sees job {job_id}")


async def audit(network: Network) -> AuditReport:
    """`troop admin audit-ledger` on the test's database: the report (ok or not)."""
    return await read_audit(CoordinatorSettings(database_url=network.postgres_url))


class Stopwatch:
    """Seconds since it was made: the durations the tests print (ADR 52 quotes them)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 1)

"""Issue 15's acceptance, honest half: "an honest worker on the real SmolLM2 model passes
100 verification checks with no false alarm, on the built-in engine and through the
`--engine openai` relay to a real llama.cpp server serving the same GGUF".

All real processes: the coordinator on PostgreSQL trusting the test's verifier key, one
worker (built-in engine, bf16; or the relay in front of llama.cpp on the shipped GGUF),
and the verifier in the test process (the float32 TorchScorer, three joined users' SDK
clients) running 100 `check_once` against the node, 8 at a time (the built-in engine
batches them; llama.cpp queues them), each decided verdict submitted. Jobs come from the
verifier's own generator (`jobs.draw_job`, seeded) with max_tokens capped at 32 for CI
time (the thresholds hold per position; they were measured at 48: docs/adr/0052).

What they guard: a judge or scorer that cries wolf on an honest engine's numerics (bf16
batching, llama.cpp's 4-bit kernels and repeat penalty), a relay whose evidence does not
match its text, a coordinator that drops or miscounts PASSED verdicts (the record must
equal the findings), one that holds an honest node's pay or routes around it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import require
from tests.state.conftest import Network, Process
from tests.verification.acceptance import (
    VERIFIER,
    Stopwatch,
    audit,
    listed,
    node_record,
    relay_worker,
    run_checks,
    settled,
    torch_worker,
    users,
    verified_coordinator,
)
from troop_client import ChatOptions, Message, TroopClient
from troop_common.keys import Identity
from troop_verifier.judging import Outcome
from troop_verifier.runner import Verifier

pytestmark = [pytest.mark.model, pytest.mark.e2e]

CHECKS = 100
CONCURRENCY = 8
# A check decides nothing (no verdict) when the answer has fewer than 8 scored tokens
# (e.g. a one-line translation that stops early) or the stream fails before finishing;
# the drawn prompts rarely end that soon.
MAX_INCONCLUSIVE = 5


async def passes_every_check(
    network: Network, coordinator: Process, worker: Process, scorer, name: str
) -> None:
    clock = Stopwatch()
    async with users(coordinator.address, 3) as clients:
        node = await listed(clients[0], name, worker)
        print(f"{name}: listed after {clock()} s")
        verifier = Verifier(clients, scorer, VERIFIER, rng=random.Random(15))
        clock = Stopwatch()
        checks = await run_checks(verifier, node, CHECKS, concurrency=CONCURRENCY)
        print(f"{name}: {CHECKS} checks in {clock()} s")
        by_outcome = {o: [c for c in checks if c.finding.outcome == o] for o in Outcome}
        passed = by_outcome[Outcome.PASSED]
        inconclusive = by_outcome[Outcome.INCONCLUSIVE]
        print(f"{name}: " + ", ".join(f"{o}: {len(c)}" for o, c in by_outcome.items()))
        for check in inconclusive:
            print(f"  inconclusive: {check.finding.reason} ({check.text!r})")

        assert [(c.finding, c.job, c.text) for c in by_outcome[Outcome.FAILED]] == []
        assert len(inconclusive) <= MAX_INCONCLUSIVE
        assert all(c.submitted for c in passed)
        record = (await node_record(clients[0], name)).verification
        assert record is not None
        assert (record.checks_passed, record.checks_failed) == (len(passed), 0)
        assert record.failed_models == () and record.held_until is None and not record.barred

        # Still routed: an unpinned job goes to it (the network's only node).
        answer = await clients[0].complete(
            [Message("user", "Say hello.")], options=ChatOptions(max_tokens=8)
        )
        assert (await clients[0].job(answer.job_id)).node_id == name
        await settled(clients, [c.job_id for c in checks if c.job_id] + [answer.job_id])
        # Every check was paid like a user's job, and its owner earned it all: nothing held.
        async with TroopClient(
            coordinator.address, Identity.load_or_create(network.tmp_path / name / "owner.key")
        ) as owner:
            earned = (await owner.balance()).balance_millicredits
        spent = 0
        for client in clients:
            balance = await client.balance()
            assert balance.reserved_millicredits == 0
            spent += 3_600_000 - balance.balance_millicredits
        assert earned == spent > 0
    report = await audit(network)
    assert report.ok and report.held_millicredits == 0, report


async def test_an_honest_built_in_engine_worker_passes_100_checks(
    network: Network, scorer, processes
) -> None:
    coordinator = await verified_coordinator(network)
    worker = torch_worker(network, coordinator.address, "honest-torch")
    await passes_every_check(network, coordinator, worker, scorer, "honest-torch")


async def test_an_honest_llama_cpp_relay_worker_passes_100_checks(
    network: Network, scorer, smollm2_path: Path, tmp_path: Path
) -> None:
    from bench.llama_cpp import LlamaServer, llama_python

    python = llama_python()
    require("llama.cpp's server", python is not None, "run scripts/llama-server-env")
    assert python is not None
    coordinator = await verified_coordinator(network)
    async with LlamaServer(
        python, smollm2_path, log_path=tmp_path / "llama.log", threads=1
    ) as llama:
        worker = relay_worker(network, coordinator.address, "honest-relay", llama.url)
        await passes_every_check(network, coordinator, worker, scorer, "honest-relay")

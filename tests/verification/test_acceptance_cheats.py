"""Issue 15's acceptance, cheating half: "a worker that serves a cheaper stand-in under the
claimed name — the same model truncated to fewer layers, and the same model with
perturbed weights, both built by the test from the shipped GGUF — is caught within N
checks; its earnings are withheld and it stops receiving jobs for that model."

All real processes: the coordinator on PostgreSQL trusting the test's verifier key; the
cheater, a worker claiming SmolLM2's name while serving a cheat GGUF (15 of 30 blocks, or
every block matrix with 3-bit-like noise: tests/verification/cheat_models.py) on the
built-in engine, or relaying to llama.cpp serving the truncated file; the other node, a
fake-engine worker serving the same model id (it only has to be routable). The verifier
(float32 TorchScorer, two joined users) checks the cheater, pinned, one check at a time,
until the first FAILED verdict. ADR 52 measured N = 1 for these cheats (every one of 32
checks failed); the test allows N = 2 and prints the count it took.

What it guards: a judge too lax to tell another model (it would pass the cheat), a
verifier that does not submit FAILED verdicts, and a coordinator that ignores them (the
record, the held pay, the routing). Jobs come from the verifier's generator with
max_tokens capped at 32 (the thresholds hold per position; measured at 48: docs/adr/0052).
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.conftest import require
from tests.state.conftest import Network
from tests.verification.acceptance import (
    MODEL,
    VERIFIER,
    Stopwatch,
    audit,
    capped_job,
    listed,
    node_record,
    relay_worker,
    settled,
    torch_worker,
    users,
    verified_coordinator,
)
from tests.verification.cheat_models import THREE_BIT_NOISE, perturbed, truncated
from troop_client import ChatOptions, Message, TroopClient
from troop_common.keys import Identity
from troop_verifier.judging import Outcome
from troop_verifier.runner import Check, Verifier

pytestmark = [pytest.mark.model, pytest.mark.e2e]

N = 2  # checks within which a cheat must be caught (ADR 52 measured 1)
UNPINNED = 10


def build_cheat(kind: str, source: Path, folder: Path) -> Path:
    folder.mkdir()
    if kind == "truncated":
        return truncated(source, folder / "truncated.gguf", 15)
    return perturbed(source, folder / "perturbed.gguf", THREE_BIT_NOISE, seed=52)


@pytest.mark.parametrize(
    ("engine", "cheat"),
    [("torch", "truncated"), ("torch", "perturbed"), ("llama.cpp", "truncated")],
)
async def test_a_cheaper_model_under_the_claimed_name_is_caught_held_and_routed_around(
    network: Network, scorer, smollm2_path: Path, tmp_path: Path, engine: str, cheat: str
) -> None:
    clock = Stopwatch()
    path = build_cheat(cheat, smollm2_path, tmp_path / "cheat")
    coordinator = await verified_coordinator(network)
    other = network.fake_worker(coordinator.address, "other")
    async with AsyncExitStack() as stack:
        if engine == "torch":
            cheater = torch_worker(network, coordinator.address, "cheater", path)
        else:
            from bench.llama_cpp import LlamaServer, llama_python

            python = llama_python()
            require("llama.cpp's server", python is not None, "run scripts/llama-server-env")
            assert python is not None
            llama = await stack.enter_async_context(
                LlamaServer(python, path, log_path=tmp_path / "llama.log")
            )
            cheater = relay_worker(network, coordinator.address, "cheater", llama.url)
        clients = await stack.enter_async_context(users(coordinator.address, 2))
        user = clients[0]
        node = await listed(user, "cheater", cheater)
        await listed(user, "other", other)
        print(f"{engine}/{cheat}: built and listed after {clock()} s")

        # Checks pinned to the cheater until the first FAILED verdict.
        verifier = Verifier(clients, scorer, VERIFIER, rng=random.Random(15))
        checks: list[Check] = []
        while not checks or checks[-1].finding.outcome != Outcome.FAILED:
            assert len(checks) < N, [c.finding for c in checks]
            checks.append(await verifier.check_once(node, MODEL, capped_job(verifier.rng)))
        caught = checks[-1]
        print(f"{engine}/{cheat}: caught at check {len(checks)}: {caught.finding.reason}")
        assert caught.submitted

        # The coordinator's record: failed on this model, its pay held, not barred.
        record = (await node_record(user, "cheater")).verification
        assert record is not None
        assert record.checks_failed == 1 and record.failed_models == (MODEL,)
        assert record.held_until is not None and not record.barred

        # A user's job pinned to it still runs and is charged; its owner earns nothing yet.
        await settled(clients, [c.job_id for c in checks if c.job_id])
        async with TroopClient(
            coordinator.address, Identity.load_or_create(network.tmp_path / "cheater/owner.key")
        ) as owner:
            owner_before = (await owner.balance()).balance_millicredits
            held_before = (await audit(network)).held_millicredits
            answer = await user.complete(
                [Message("user", "What is the capital of France?")],
                options=ChatOptions(temperature=0, max_tokens=16),
                node_id="cheater",
            )
            await settled(clients, [answer.job_id])
            job = await user.job(answer.job_id)
            assert job.node_id == "cheater" and job.state == "charged"
            assert job.charged_millicredits > 0
            assert (await owner.balance()).balance_millicredits == owner_before
        report = await audit(network)
        assert report.ok, report
        assert report.held_millicredits == held_before + job.charged_millicredits

        # Unpinned jobs for the model go to the other node, never to the cheater; it is
        # still listed (not barred), under no model it failed.
        for _ in range(UNPINNED):
            grant = await user.authorize(MODEL, max_tokens=16)
            assert grant.node_id == "other"
        assert "cheater" not in [n.node_id for n in await user.nodes(MODEL)]
        assert "cheater" in [n.node_id for n in await user.nodes()]
        print(f"{engine}/{cheat}: done after {clock()} s")

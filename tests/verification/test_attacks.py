"""Hostile workers against the verifier, as real processes: a coordinator on PostgreSQL
trusting the test's verifier key, the hostile worker, and the verifier in the test
(scoring the fake engine's model with FakeScorer, or SmolLM2 with the trusted scorer)."""

from __future__ import annotations

import math
import random

import pytest

from tests.state.conftest import Network
from tests.verification.acceptance import (
    MODEL,
    VERIFIER,
    listed,
    node_record,
    users,
    verified_coordinator,
)
from troop_common.evidence import open_evidence, tokens_of
from troop_verifier.jobs import VerificationJob
from troop_verifier.judging import Outcome
from troop_verifier.runner import Verifier
from troop_verifier.scoring import FakeScorer

# The fake engine echoes it: "You said: ..." is 14 tokens, enough to decide.
JOB = VerificationJob(
    (("user", "please tell me how the tides of the sea follow the moon"),), 64, 0.7, 0.95, 3
)


async def test_a_worker_that_signs_nan_log_probabilities_fails_its_check(
    network: Network, processes
) -> None:
    """Its words are the model's, so only the log-probabilities can tell; NaN compared with
    anything is false, so a judge that compared them as numbers passed every position
    (and a NaN mean too). The claim no model makes counts as infinitely far off."""
    coordinator = await verified_coordinator(network)
    worker = network.fake_worker(
        coordinator.address, "nan-node", module="tests.verification.nan_worker"
    )
    async with users(coordinator.address, 1) as clients:
        node = await listed(clients[0], "nan-node", worker)
        verifier = Verifier(clients, FakeScorer([MODEL]), VERIFIER, rng=random.Random(1))
        check = await verifier.check_once(node, MODEL, JOB)
        signed = tokens_of(open_evidence(check.evidence, check.evidence_signature,
                                         node.node_public_key))  # fmt: skip
        assert signed and all(math.isnan(t.logprob) for t in signed)  # the attack ran
        assert check.finding.outcome == Outcome.FAILED, check.finding
        assert check.submitted  # the coordinator took the verdict, with the signed NaNs
        record = (await node_record(clients[0], "nan-node")).verification
        assert record is not None and record.checks_failed == 1
        assert MODEL in record.failed_models


@pytest.mark.model
@pytest.mark.e2e
async def test_a_worker_whose_token_ids_spell_other_text_fails_its_check(
    network: Network, processes, scorer
) -> None:
    """The node sends " banana" for every token (in the stream and in its signed
    evidence) but signs the model's own token ids and log-probabilities with them. The
    bytes are what the user got: a scorer that trusted the ids scored the honest model's
    tokens and passed it; one that takes an id only when it spells the token's bytes
    scores " banana" at every position."""
    coordinator = await verified_coordinator(network)
    worker = network.fake_worker(
        coordinator.address, "respelling-node", module="tests.verification.respelling_worker",
        TROOP_WORKER_ENGINE="torch",
    )  # fmt: skip
    greedy = VerificationJob((("user", "What is the capital of France?"),), 24, 0.0, 1.0, None)
    async with users(coordinator.address, 1) as clients:
        node = await listed(clients[0], "respelling-node", worker)
        verifier = Verifier(clients, scorer, VERIFIER, rng=random.Random(2))
        check = await verifier.check_once(node, MODEL, greedy)

        assert check.text and set(check.text.split()) == {"banana"}  # the attack ran
        signed = tokens_of(open_evidence(check.evidence, check.evidence_signature,
                                         node.node_public_key))  # fmt: skip
        assert all(t.token_id is not None for t in signed)  # with the model's own ids
        assert check.finding.outcome == Outcome.FAILED, check.finding
        assert check.submitted
        record = (await node_record(clients[0], "respelling-node")).verification
        assert record is not None and record.checks_failed == 1

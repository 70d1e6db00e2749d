"""Verifier.check_once without a network: a stub client streams what a node would, the
fake scorer is the trusted model; the finding and the signed verdict are checked."""

from __future__ import annotations

import random
import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest

from troop_client.chat import ChatChunk
from troop_client.evidence import verified_evidence
from troop_client.results import Node
from troop_common.errors import Unavailable
from troop_common.evidence import TokenEvidence, build_evidence
from troop_common.fake_model import echo_logprob, echo_words
from troop_common.keys import Identity, verify_ed25519
from troop_common.proto import coordinator_pb2, inference_pb2
from troop_verifier.jobs import VerificationJob
from troop_verifier.judging import Outcome
from troop_verifier.runner import Verifier
from troop_verifier.scoring import FakeScorer

MODEL = "smollm2-135m-instruct"
JOB = VerificationJob((("user", "tell me about the tides of the sea please"),), 64, 0.0, 1.0, None)


class StubCoordinator:
    def __init__(self) -> None:
        self.verdicts: list[coordinator_pb2.SubmitVerdictRequest] = []

    async def submit_verdict(self, request: coordinator_pb2.SubmitVerdictRequest) -> Any:
        self.verdicts.append(request)
        return coordinator_pb2.SubmitVerdictResponse()


class StubClient:
    """What TroopClient.chat yields from one node: text chunks, then the last with evidence."""

    def __init__(self, node: Identity, tokens: list[TokenEvidence] | None, *, signer=None,
                 fail: bool = False, model: str = MODEL) -> None:  # fmt: skip
        self.node, self.tokens, self.signer, self.fail, self.model = (
            node,
            tokens,
            signer,
            fail,
            model,
        )
        self.coordinator = StubCoordinator()
        self.asked: list[dict[str, Any]] = []

    async def chat(self, messages, *, model, options, node_id) -> AsyncIterator[ChatChunk]:
        self.asked.append({"model": model, "node_id": node_id, "options": options})
        if self.fail:
            raise Unavailable("node gone")
        words = [t.token.decode() for t in self.tokens or []]
        for word in words:
            yield ChatChunk("job-1", word)
        evidence = signature = b""
        if self.tokens is not None:
            evidence = build_evidence(
                job_id="job-1", node_id=node_id, model=self.model,
                messages=[(m.role, m.content) for m in messages], tokens=self.tokens,
            )  # fmt: skip
            signature = (self.signer or self.node).sign(evidence)
        # As the SDK does: only evidence the node's key signed about this job reaches us.
        last = inference_pb2.ChatCompletionResponse(
            id="job-1", evidence=evidence, evidence_signature=signature
        )
        kept = verified_evidence(
            last, job_id="job-1", node_id=node_id, node_public_key=self.node.public_key_hex
        )
        yield ChatChunk("job-1", "", "stop", evidence=kept)


def node_of(identity: Identity) -> Node:
    return Node("node-1", "127.0.0.1:1", identity.public_key_hex, (MODEL,), 0, 0, 4, 1.0,
                "cpu", 2, 0, None)  # fmt: skip


def honest_tokens() -> list[TokenEvidence]:
    return [
        TokenEvidence(w.encode(), echo_logprob(n, w))
        for n, w in enumerate(echo_words(JOB.messages))
    ]


async def check(client: StubClient, node: Identity, key: Identity | None = None):
    verifier = Verifier(
        [client], FakeScorer([MODEL]), key or Identity.generate(), rng=random.Random(0)
    )
    return await verifier.check_once(node_of(node), MODEL, JOB)


async def test_an_honest_answer_passes_and_a_signed_verdict_goes_to_the_coordinator() -> None:
    node, key = Identity.generate(), Identity.generate()
    client = StubClient(node, honest_tokens())
    result = await check(client, node, key)
    assert result.finding.outcome == Outcome.PASSED, result.finding
    assert result.finding.positions_checked == len(honest_tokens())
    assert client.asked[0]["node_id"] == "node-1"
    assert result.submitted
    [request] = client.coordinator.verdicts
    verify_ed25519(key.public_key_hex, request.signature, request.verdict)
    verdict = coordinator_pb2.Verdict.FromString(request.verdict)
    assert verdict.outcome == coordinator_pb2.VERDICT_OUTCOME_PASSED
    assert (verdict.job_id, verdict.node_id, verdict.model) == ("job-1", "node-1", MODEL)
    assert verdict.verifier_public_key == key.public_key_hex
    assert verdict.evidence == result.evidence and verdict.evidence_signature


async def test_wrong_logprobs_fail() -> None:
    node = Identity.generate()
    tokens = [TokenEvidence(t.token, -0.01) for t in honest_tokens()]  # overconfident cheat
    result = await check(StubClient(node, tokens), node)
    assert result.finding.outcome == Outcome.FAILED
    assert result.submitted


@pytest.mark.parametrize(
    ("case", "reason"),
    [("none", "without output evidence"), ("other key", "without output evidence"),
     ("other model", "names model")],
)  # fmt: skip
async def test_missing_or_foreign_evidence_fails(case: str, reason: str) -> None:
    node = Identity.generate()
    client = {
        "none": StubClient(node, None),
        "other key": StubClient(node, honest_tokens(), signer=Identity.generate()),
        "other model": StubClient(node, honest_tokens(), model="cheap-model"),
    }[case]
    result = await check(client, node)
    assert result.finding.outcome == Outcome.FAILED
    assert reason in result.finding.reason
    verdict = coordinator_pb2.Verdict.FromString(client.coordinator.verdicts[0].verdict)
    assert verdict.outcome == coordinator_pb2.VERDICT_OUTCOME_FAILED
    # Evidence its node did not sign is not sent: the coordinator checks its receipt instead.
    assert bool(verdict.evidence) == (case == "other model")


async def test_a_stream_that_fails_decides_nothing() -> None:
    node = Identity.generate()
    client = StubClient(node, honest_tokens(), fail=True)
    result = await check(client, node)
    assert result.finding.outcome == Outcome.INCONCLUSIVE
    assert not client.coordinator.verdicts


def test_checks_are_spaced_so_each_node_is_checked_once_per_interval() -> None:
    verifier = Verifier([object()], FakeScorer(), Identity.generate(), interval_s=600,  # type: ignore[list-item]
                        rng=random.Random(7))  # fmt: skip
    delays = [verifier.next_delay(10) for _ in range(5000)]
    assert statistics.fmean(delays) == pytest.approx(60, rel=0.05)
    assert statistics.stdev(delays) == pytest.approx(60, rel=0.1)  # exponential: no rhythm


async def test_run_checks_listed_nodes_until_stopped(eventually) -> None:
    import asyncio

    node = Identity.generate()

    class Listing(StubClient):
        async def nodes(self, model: str) -> list[Node]:
            return [node_of(node)]

    client = Listing(node, honest_tokens())
    verifier = Verifier([client], FakeScorer([MODEL]), Identity.generate(), interval_s=0.01,  # type: ignore[list-item]
                        rng=random.Random(3))  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.ensure_future(verifier.run(stop))
    await eventually(lambda: len(client.coordinator.verdicts) >= 3, timeout_s=10)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert {asked["node_id"] for asked in client.asked} == {"node-1"}


async def test_an_identity_that_failed_a_node_or_ran_its_checks_is_renewed() -> None:
    """A node that failed a check saw the verifier's key on that job, and a key that
    keeps coming back stands out: the verifier swaps it for a fresh identity then, so a
    cheater cannot answer that key honestly and everyone else with its cheap model."""
    node = Identity.generate()
    honest, cheat = (
        StubClient(node, honest_tokens()),
        StubClient(node, [TokenEvidence(t.token, -0.01) for t in honest_tokens()]),
    )
    fresh: list[StubClient] = []

    async def renew(old: Any) -> Any:
        fresh.append(StubClient(node, honest_tokens()))
        return fresh[-1]

    def verifier(client: StubClient, identity_checks: int) -> Verifier:
        return Verifier(
            [client], FakeScorer([MODEL]), Identity.generate(), rng=random.Random(0),
            renew=renew, identity_checks=identity_checks,  # type: ignore[arg-type]
        )  # fmt: skip

    failing = verifier(cheat, identity_checks=0)
    assert (await failing.check_once(node_of(node), MODEL, JOB)).finding.outcome == Outcome.FAILED
    assert failing.clients == fresh and cheat not in failing.clients  # retired at once

    passing = verifier(honest, identity_checks=2)
    await passing.check_once(node_of(node), MODEL, JOB)
    assert passing.clients == [honest]  # one pass: kept
    await passing.check_once(node_of(node), MODEL, JOB)
    assert passing.clients == [fresh[-1]] and len(fresh) == 2  # its second: worn, renewed

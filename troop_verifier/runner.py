"""The verifier's loop: pick a node, send it an ordinary job, check the answer, report.

`Verifier.check_once(node)` is one check, end to end: a job drawn like a user's
(`jobs`), streamed from that node only (`AuthorizeRequest.node_id`) through the
client SDK as one of the verifier's user identities, so it is authorized, paid and
countersigned like any job; then the evidence in the stream's last chunk (which the SDK
kept only once it verified with the node's pinned key) is matched to the job, its tokens
scored on the trusted model (`scoring`) and judged
(`judging`); a decided finding goes to the coordinator as a signed verdict
(`verdicts`). `run()` repeats it: each node is checked once per `interval_s` on
average, at exponentially distributed times (a Poisson process: nothing in the
timing tells a check from a user).

A finished stream without evidence, with evidence the node's key did not sign, or
with evidence about another job, model, prompt or text FAILS: a node cannot escape a
check by leaving its evidence out (docs/adr/0052). A stream that fails (node down,
refused) decides nothing: availability is the breakers' and reputation's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from troop_client.chat import ChatOptions, Message
from troop_client.evidence import VerifiedEvidence
from troop_client.results import Node
from troop_client.sdk import TroopClient
from troop_common.errors import RateLimited, TroopError
from troop_common.evidence import TokenEvidence, messages_sha256
from troop_common.keys import Identity
from troop_verifier.jobs import PROMPTS, VerificationJob, draw_job
from troop_verifier.judging import DEFAULT_THRESHOLDS, Finding, Outcome, Thresholds, judge
from troop_verifier.scoring import Scorer
from troop_verifier.verdicts import signed_verdict

log = logging.getLogger("troop.verifier")

Sleep = Callable[[float], Awaitable[None]]
# A fresh identity's client to use in place of a retired one (joined, ready to pay).
Renew = Callable[[TroopClient], Awaitable[TroopClient]]


@dataclass
class Check:
    """One check's outcome: the finding, and what was reported."""

    node_id: str
    model: str
    job: VerificationJob
    finding: Finding
    job_id: str = ""
    text: str = ""
    evidence: bytes = field(default=b"", repr=False)
    evidence_signature: bytes = field(default=b"", repr=False)
    submitted: bool = False


@dataclass
class Streamed:
    job_id: str = ""
    text: str = ""
    finish_reason: str | None = None
    # The last chunk's evidence, as the SDK kept it: signed by the node, about this job.
    evidence: VerifiedEvidence | None = None


class Verifier:
    """`Verifier(clients, scorer, key)`; `await check_once(node)` or `await run(stop)`.

    `clients`: the user identities' SDK clients (one is drawn per check); `key`: the
    verifier's identity that signs verdicts; `submit=False` judges without reporting;
    `renew`: makes a fresh identity's client, used in place of one a node may have learnt
    (after it failed that node, or after `identity_checks` checks; 0: only the former).
    `rng` and `sleep` are injectable for tests."""

    def __init__(
        self,
        clients: Sequence[TroopClient],
        scorer: Scorer,
        key: Identity,
        *,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        prompts: Sequence[str] = PROMPTS,
        interval_s: float = 3600.0,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        submit: bool = True,
        renew: Renew | None = None,
        identity_checks: int = 0,
    ) -> None:
        if not clients:
            raise ValueError("at least one client")
        self.clients = list(clients)
        self.scorer = scorer
        self.key = key
        self.thresholds = thresholds
        self.prompts = list(prompts)
        self.interval_s = interval_s
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.submit = submit
        self.renew = renew
        self.identity_checks = identity_checks
        self._uses: dict[int, int] = {}
        self.checks = 0

    async def check_once(
        self, node: Node, model: str | None = None, job: VerificationJob | None = None
    ) -> Check:
        """Check `node` once on `model` (the scorer's first by default)."""
        model = model or self.scorer.models[0]
        job = job or draw_job(self.rng, self.prompts)
        client = self.rng.choice(self.clients)
        try:
            streamed = await self._stream(client, node, model, job)
        except TroopError as exc:
            if isinstance(exc, RateLimited):
                # Each identity is held to the coordinator's per-user Authorize limit like
                # any user (20 an hour by default): more nodes need more identities.
                log.warning(
                    "a verification job was rate-limited: with many nodes, raise "
                    "TROOP_VERIFIER_IDENTITIES or TROOP_VERIFIER_INTERVAL_SECONDS (%s)",
                    exc.message,
                )
            reason = f"the job did not complete: {exc.message}"[:200]
            return Check(node.node_id, model, job, Finding(Outcome.INCONCLUSIVE, 0, 0, reason))
        finding = await self._judge(node, model, job, streamed)
        evidence = streamed.evidence
        check = Check(
            node.node_id, model, job, finding, streamed.job_id, streamed.text,
            evidence.data if evidence else b"", evidence.signature if evidence else b"",
        )  # fmt: skip
        self.checks += 1
        if finding.outcome != Outcome.INCONCLUSIVE and self.submit:
            check.submitted = await self._report(client, check)
        log.info(
            "checked node %s on %s (job %s): %s, %d/%d positions off%s",
            node.node_id, model, check.job_id, finding.outcome, finding.positions_failed,
            finding.positions_checked, f" ({finding.reason})" if finding.reason else "",
        )  # fmt: skip
        await self._retire_if_known(client, finding)
        return check

    async def _retire_if_known(self, client: TroopClient, finding: Finding) -> None:
        """Swap `client` for a fresh identity once a node may know it for the verifier's:
        it just failed a node (that node saw its key on the failed job), or it has run
        `identity_checks` checks. Jobs already running on it finish as they are."""
        if self.renew is None:
            return
        used = self._uses[id(client)] = self._uses.get(id(client), 0) + 1
        worn = self.identity_checks > 0 and used >= self.identity_checks
        if finding.outcome != Outcome.FAILED and not worn:
            return
        if client not in self.clients:  # a concurrent check retired it already
            return
        index = self.clients.index(client)
        self.clients[index] = await self.renew(client)
        self._uses.pop(id(client), None)
        log.info("retired a verification identity after %d checks (%s)", used, finding.outcome)

    async def _stream(
        self, client: TroopClient, node: Node, model: str, job: VerificationJob
    ) -> Streamed:
        options = ChatOptions(
            temperature=job.temperature, top_p=job.top_p, max_tokens=job.max_tokens,
            seed=job.seed,
        )  # fmt: skip
        messages = [Message(role, content) for role, content in job.messages]
        out = Streamed()
        parts = []
        async for chunk in client.chat(
            messages, model=model, options=options, node_id=node.node_id
        ):
            out.job_id = chunk.job_id or out.job_id
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                out.finish_reason = chunk.finish_reason
                out.evidence = chunk.evidence
        out.text = "".join(parts)
        return out

    async def _judge(
        self, node: Node, model: str, job: VerificationJob, streamed: Streamed
    ) -> Finding:
        if streamed.finish_reason is None:
            return Finding(Outcome.INCONCLUSIVE, 0, 0, "the stream ended without finishing")
        evidence = streamed.evidence
        if evidence is None:
            # None sent, or none its node signed (the SDK dropped it): the node's receipt
            # must then vouch for none.
            return Finding(
                Outcome.FAILED, 0, 0, "a finished job without output evidence its node signed"
            )
        mismatch = evidence_mismatch(evidence, model, job, streamed.text)
        tokens = evidence.tokens
        if mismatch:
            return Finding(Outcome.FAILED, 0, 0, mismatch)
        scores = await asyncio.to_thread(self.scorer.score, job.messages, tokens)
        return judge(scores, tokens, job.temperature, self.thresholds)

    async def _report(self, client: TroopClient, check: Check) -> bool:
        request = signed_verdict(
            self.key, job_id=check.job_id, node_id=check.node_id, model=check.model,
            finding=check.finding, evidence=check.evidence,
            evidence_signature=check.evidence_signature,
        )  # fmt: skip
        try:
            await client.coordinator.submit_verdict(request)
        except TroopError as exc:
            log.warning(
                "the coordinator refused the verdict on job %s: %s", check.job_id, exc.message
            )
            return False
        return True

    async def nodes(self, model: str) -> list[Node]:
        return await self.rng.choice(self.clients).nodes(model)

    def next_delay(self, node_count: int) -> float:
        """Seconds to the next check: exponential, so each of `node_count` nodes is
        checked once per `interval_s` on average."""
        return self.rng.expovariate(max(1, node_count) / self.interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Check nodes at the configured rate until `stop` is set."""
        while not stop.is_set():
            for model in self.scorer.models:
                try:
                    nodes = await self.nodes(model)
                except TroopError as exc:
                    log.warning("cannot list the nodes: %s", exc.message)
                    nodes = []
                delay = self.next_delay(len(nodes))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
                if nodes:
                    await self.check_once(self.rng.choice(nodes), model)


def evidence_mismatch(
    evidence: VerifiedEvidence, model: str, job: VerificationJob, text: str
) -> str:
    """Why the evidence is not about this job's output ("" when it is). Its job and node
    the SDK checked already."""
    if evidence.model != model:
        return f"the evidence names model {evidence.model!r}"
    if evidence.messages_sha256 != messages_sha256(job.messages):
        return "the evidence is about another prompt"
    if len(evidence.tokens) > job.max_tokens:
        return f"{len(evidence.tokens)} tokens in the evidence, more than max_tokens"
    if not _spells(evidence.tokens, text):
        return "the evidence's tokens do not spell the text sent"
    return ""


def _spells(tokens: Sequence[TokenEvidence], text: str) -> bool:
    """Whether the streamed text is what the tokens say (a stop sequence may cut the text
    short; a character split across tokens may be lost where an upstream sends text)."""
    said = b"".join(token.token for token in tokens).decode(errors="replace")
    return said.replace("\ufffd", "").startswith(text.replace("\ufffd", ""))

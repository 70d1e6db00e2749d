"""The cheating-worker harness: a real worker PROCESS with one cheat switched on
(tests/security/cheating_worker.py), a real node key on disk, heartbeating to the real
coordinator in this test, driven by the real SDK. Each test shows the ledger's honest
outcome: the user charged exactly the catalog formula of what the client really
received (computed here from the grant's published price and the stream the SDK got),
the owner paid the same, the audit clean, and a dispute where the two sides disagree.

    charge = (prompt × prompt_per_1k + completion × completion_per_1k + 500) // 1000

with completion = min(node's receipt, client's countersignature) (the client's alone, and
no prompt, when no receipt was accepted) and prompt billed only when completion > 0. The
client vouches for at most the UTF-8 bytes it received + 1 tokens (it has no tokenizer);
the fake engine says one word per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from troop_client import ChatChunk, ChatOptions, Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.hardware_proof import multiplier_for, reference_tflops, tflops_for
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.db.models import Job, JobStatus, LedgerEntry
from troop_coordinator.usage import UsageBook
from troop_worker.app import Worker

from .conftest import coordinator_settings, worker_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
TEXT = "hello there friend"
# The fake engine's answer: "You said: hello there friend", one token a word.
ANSWER_TOKENS = 2 + len(TEXT.split())
# It counts a message's words + 1 as its prompt tokens.
PROMPT_TOKENS = len(TEXT.split()) + 1
MAX_TOKENS = 64
OPTIONS = ChatOptions(max_tokens=MAX_TOKENS)
HOLD_S = 30.0


@dataclass
class Cheater:
    """A cheating worker process and the coordinator it works for."""

    coordinator: Coordinator
    popen: subprocess.Popen[bytes]
    log: Path
    outcomes_file: Path
    node_id: str
    owner: str  # the hex public key credited for the node's work

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def outcomes(self, kind: str = "receipt") -> list[dict[str, Any]]:
        """What the cheat submitted and what the coordinator answered, in order."""
        if not self.outcomes_file.exists():
            return []
        lines = self.outcomes_file.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["kind"] == kind]

    def tell(self, line: str) -> None:
        """A line on the cheat's stdin (a job id, a proof kind)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"the cheating worker exited:\n{self.output()}")
        return True


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The process, its output in `log`, its stdin a pipe from the test."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.asynccontextmanager
async def cheating_worker(
    tmp_path: Path,
    database_url: str,
    pem: bytes,
    eventually,
    cheat: str,
    *args: str,
    **coordinator_overrides: Any,
) -> AsyncIterator[Cheater]:
    """The coordinator here, the cheating worker as a process, the worker listed."""
    settings = coordinator_settings(tmp_path, database_url, pem, **coordinator_overrides)
    async with Coordinator(settings) as coordinator:
        owner = Identity.generate().public_key_hex
        ready, log = tmp_path / "ready.json", tmp_path / "cheat.log"
        outcomes = tmp_path / "outcomes.jsonl"
        command = [
            sys.executable, "-m", "tests.security.cheating_worker",
            "--cheat", cheat, "--coordinator", coordinator.address,
            "--data-dir", str(tmp_path / "cheat"), "--owner", owner,
            "--ready", str(ready), "--outcomes", str(outcomes), *args,
        ]  # fmt: skip
        popen = spawn(command, log)
        cheater = Cheater(coordinator, popen, log, outcomes, "", owner)
        try:
            await eventually(lambda: cheater.alive() and ready.exists(), timeout_s=30)
            cheater.node_id = json.loads(ready.read_text())["node_id"]
            async with CoordinatorClient(coordinator.address) as probe:

                async def listed() -> bool:
                    nodes = (await probe.list_nodes(MODEL)).nodes
                    return cheater.alive() and any(n.node_id == cheater.node_id for n in nodes)

                await eventually(listed, timeout_s=20)
            yield cheater
        finally:
            assert popen.stdin is not None
            popen.stdin.close()
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(popen.wait, 10)
            except subprocess.TimeoutExpired:
                popen.kill()
                await asyncio.to_thread(popen.wait)


def spy_on_grants(troop: TroopClient) -> list[pb.AuthorizeResponse]:
    """The grants the SDK gets from Authorize (with the published price), as it gets them."""
    grants: list[pb.AuthorizeResponse] = []
    authorize = troop.coordinator.authorize

    async def recording(*args: Any, **kwargs: Any) -> pb.AuthorizeResponse:
        grant = await authorize(*args, **kwargs)
        grants.append(grant)
        return grant

    troop.coordinator.authorize = recording  # type: ignore[method-assign]
    return grants


async def stream(troop: TroopClient) -> tuple[list[ChatChunk], TroopError | None]:
    """One job through the SDK: the chunks that arrived, and the error that ended it."""
    chunks: list[ChatChunk] = []
    try:
        async for chunk in troop.chat([Message("user", TEXT)], model=MODEL, options=OPTIONS):
            chunks.append(chunk)
    except TroopError as exc:
        return chunks, exc
    finally:
        await troop.drain_reports(10)  # the SDK's countersignature is on its way
    return chunks, None


def formula(grant: pb.AuthorizeResponse, prompt_tokens: int, completion_tokens: int) -> int:
    """The documented charge, from the grant's published price."""
    if completion_tokens == 0:
        prompt_tokens = 0  # prompt processing of a job that delivered nothing is not billed
    price = grant.price
    total = (
        prompt_tokens * price.prompt_millicredits_per_1k_tokens
        + completion_tokens * price.completion_millicredits_per_1k_tokens
    )
    return (total + 500) // 1000


def received_tokens(chunks: list[ChatChunk]) -> int:
    """Tokens the client really received from the fake engine (a word a token)."""
    return len("".join(c.text for c in chunks).split())


async def job_row(coordinator: Coordinator, job_id: str) -> Job:
    async with coordinator.ledger.sessions() as session:
        return (await session.execute(select(Job).where(Job.job_id == job_id))).scalar_one()


def closed(coordinator: Coordinator, job_id: str):
    async def check() -> bool:
        return (await job_row(coordinator, job_id)).status != JobStatus.OPEN.value

    return check


async def entry_count(coordinator: Coordinator) -> int:
    async with coordinator.ledger.sessions() as session:
        return (await session.execute(select(func.count(LedgerEntry.id)))).scalar_one()


async def sweep_at(coordinator: Coordinator, when: datetime) -> None:
    """What the sweeper does at `when`: settle overdue receipts, expire stale jobs."""
    await coordinator.ledger.settle_overdue(when)
    await coordinator.ledger.expire_stale(when)


async def assert_charged(
    cheater: Cheater, user: Identity, job_id: str, charge: int, *, disputed: bool
) -> None:
    """The job closed charging `charge`, paid to the owner, the rest back with the user,
    the audit clean, and a dispute on node and user exactly when `disputed`."""
    coordinator = cheater.coordinator
    row = await job_row(coordinator, job_id)
    # A job that costs nothing may be closed as refunded (the client's 0 came first).
    statuses = {JobStatus.CHARGED.value} | ({JobStatus.REFUNDED.value} if charge == 0 else set())
    assert row.status in statuses and row.charged_millicredits == charge, row
    starter = coordinator.settings.starter_millicredits
    assert await coordinator.ledger.balance(user.public_key_hex) == (starter - charge, 0)
    assert await coordinator.ledger.balance(cheater.owner) == (charge, 0)
    book = UsageBook(coordinator.ledger.sessions)
    on_node = await book.disputes_of(cheater.node_id)
    on_user = await book.disputes_of_user(user.public_key_hex)
    assert [d["job_id"] for d in on_node] == ([job_id] if disputed else [])
    assert on_user == on_node
    report = await coordinator.ledger.audit()
    assert report.ok, report
    assert report.overcharged_jobs == [] and report.unreceipted_charges == []
    if disputed:
        assert report.node_dispute_leaders == [(cheater.node_id, 1)]
        assert report.user_dispute_leaders == [(user.public_key_hex, 1)]


@pytest.fixture
def cheater_factory(tmp_path: Path, ticket_key_pem: bytes, eventually):
    def start(database_url: str, cheat: str, *args: str, **overrides: Any):
        return cheating_worker(
            tmp_path, database_url, ticket_key_pem, eventually, cheat, *args, **overrides
        )

    return start


async def test_an_inflated_receipt_is_charged_at_the_clients_count(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: the receipt claims 10× the completion tokens (within max_tokens).
    Protection: settlement charges min(node, client) and records the disagreement."""
    user = Identity.generate()
    async with cheater_factory(database_url, "inflate") as cheater:
        async with TroopClient(cheater.coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
            (offer,) = await troop.models()
        assert error is None
        (grant,) = grants
        # The price the charge is computed from is the one published before the job.
        assert (offer.prompt_millicredits_per_1k, offer.completion_millicredits_per_1k) == (
            grant.price.prompt_millicredits_per_1k_tokens,
            grant.price.completion_millicredits_per_1k_tokens,
        )
        assert received_tokens(chunks) == ANSWER_TOKENS == chunks[-1].usage.completion_tokens
        assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
        await eventually(closed(cheater.coordinator, grant.job_id))
        (sent,) = cheater.outcomes()
        assert (sent["code"], sent["completion_tokens"]) == ("OK", 10 * ANSWER_TOKENS)
        charge = formula(grant, PROMPT_TOKENS, ANSWER_TOKENS)
        assert 0 < charge < formula(grant, PROMPT_TOKENS, 10 * ANSWER_TOKENS)
        await assert_charged(cheater, user, grant.job_id, charge, disputed=True)


async def test_overflowing_receipts_are_refused_and_the_clients_count_is_paid(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: receipts with duration_ms = 2^64-1, completion_tokens = 2^32-1 and
    prompt_tokens = 2^32-1. Protection: the coordinator's receipt bounds (duration at most
    a day, tokens within the ticket) refuse each one INVALID_ARGUMENT naming the field,
    recording nothing. Honest outcome: a node with no acceptable receipt is paid what its
    client vouched it received, on the countersignature alone (ADR 48): those completion
    tokens, no prompt (only the node could count it), and not a millicredit more for the
    overflowing claims; the rest of the reservation returns."""
    user = Identity.generate()
    async with cheater_factory(database_url, "overflow") as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is None and received_tokens(chunks) == ANSWER_TOKENS
        (grant,) = grants
        await eventually(lambda: len(cheater.outcomes()) == 3)
        refused = cheater.outcomes()
        assert [r["code"] for r in refused] == ["INVALID_ARGUMENT"] * 3
        fields = ("receipt.duration_ms", "receipt.usage.completion_tokens",
                  "receipt.usage.prompt_tokens")  # fmt: skip
        for receipt, field in zip(refused, fields, strict=True):
            assert field in receipt["message"]
        assert refused[0]["duration_ms"] == 2**64 - 1
        assert refused[1]["completion_tokens"] == refused[2]["prompt_tokens"] == 2**32 - 1
        # The worker logs each refusal.
        await eventually(
            lambda: (
                cheater.output().count(f"coordinator refused the receipt for job {grant.job_id}")
                == 3
            )
        )
        row = await job_row(coordinator, grant.job_id)
        assert row.status == JobStatus.OPEN.value and row.node_duration_ms is None
        assert row.client_completion_tokens == ANSWER_TOKENS  # the SDK countersigned
        held = await coordinator.ledger.balance(user.public_key_hex)
        assert held[1] == grant.reserved_millicredits
        # The sweeper once the node's deadline has passed: the client's count, no prompt.
        await sweep_at(coordinator, row.countersign_deadline + timedelta(seconds=1))
        row = await job_row(coordinator, grant.job_id)
        charge = formula(grant, 0, ANSWER_TOKENS)
        assert (row.status, row.charged_millicredits) == (JobStatus.CHARGED.value, charge)
        starter = coordinator.settings.starter_millicredits
        assert await coordinator.ledger.balance(user.public_key_hex) == (starter - charge, 0)
        assert await coordinator.ledger.balance(cheater.owner) == (charge, 0)
        report = await coordinator.ledger.audit()
        assert report.ok and report.overcharged_jobs == [] and report.node_dispute_leaders == []


async def test_a_receipt_held_back_is_charged_by_tokens_not_time(
    cheater_factory, sqlite_url: str, eventually
) -> None:
    """Cheat: the worker holds its receipt back 30 s (a real hold in its process) and
    claims that time as the job's duration. Protection: the charge is the token formula
    at the price fixed at Authorize, never time; the sweeper running meanwhile neither
    settles nor expires the job before its receipt arrives (within the node's deadline,
    TROOP_COUNTERSIGN_SECONDS after the client's report: a receipt later than that would
    find the job settled on the client's count, ADR 48)."""
    user = Identity.generate()
    async with cheater_factory(
        sqlite_url, "hold", "--hold-s", str(HOLD_S), sweep_interval_s=0.5, countersign_s=HOLD_S * 2
    ) as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is None and received_tokens(chunks) == ANSWER_TOKENS
        (grant,) = grants
        # The client countersigned at once; the job waits for the node.
        row = await job_row(coordinator, grant.job_id)
        assert row.client_completion_tokens == ANSWER_TOKENS and row.node_duration_ms is None
        await eventually(closed(coordinator, grant.job_id), timeout_s=HOLD_S + 20)
        (sent,) = cheater.outcomes()
        assert sent["code"] == "OK" and sent["duration_ms"] >= HOLD_S * 1000
        row = await job_row(coordinator, grant.job_id)
        assert row.node_duration_ms == sent["duration_ms"]  # recorded, not billed
        charge = formula(grant, PROMPT_TOKENS, ANSWER_TOKENS)
        await assert_charged(cheater, user, grant.job_id, charge, disputed=False)


async def test_more_completion_tokens_than_the_ticket_allows_are_refused(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: a receipt with max_tokens + 1 completion tokens, then (refused) one with
    max_tokens. Protection: the coordinator checks a signed receipt against its ticket's
    bounds (INVALID_ARGUMENT on receipt.usage.completion_tokens, nothing recorded); the
    claim it accepts is then charged at the client's count, with a dispute."""
    user = Identity.generate()
    async with cheater_factory(database_url, "overbound") as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is None and received_tokens(chunks) == ANSWER_TOKENS
        (grant,) = grants
        assert grant.max_tokens == MAX_TOKENS
        await eventually(closed(coordinator, grant.job_id))
        await eventually(lambda: len(cheater.outcomes()) == 2)
        over, at_bound = cheater.outcomes()
        assert over["completion_tokens"] == MAX_TOKENS + 1
        assert over["code"] == "INVALID_ARGUMENT"
        assert "receipt.usage.completion_tokens" in over["message"]
        assert (at_bound["code"], at_bound["completion_tokens"]) == ("OK", MAX_TOKENS)
        row = await job_row(coordinator, grant.job_id)
        assert row.node_completion_tokens == MAX_TOKENS  # the refused claim left no trace
        charge = formula(grant, PROMPT_TOKENS, ANSWER_TOKENS)
        await assert_charged(cheater, user, grant.job_id, charge, disputed=True)


@pytest.mark.parametrize("tokens_sent", [0, 1], ids=["before-any-token", "after-one-token"])
async def test_a_node_that_aborts_is_paid_only_for_what_arrived(
    cheater_factory, database_url: str, eventually, tokens_sent: int
) -> None:
    """Cheat: the worker sends its node proof (initial metadata), aborts the stream before
    any token (or after one), and submits a receipt claiming max_tokens. Protection: the
    SDK countersigns every presented job — 0 when no token arrived, else at most the bytes
    received + 1 — and settlement charges the lower count (prompt only with a completion
    token), recording the dispute. Without the countersignature the receipt would settle
    on its own at the deadline, for max_tokens: the sweep below would charge it."""
    user = Identity.generate()
    async with cheater_factory(database_url, "abort", "--abort-after", str(tokens_sent)) as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is not None  # the stream broke
        assert len(chunks) == tokens_sent
        (grant,) = grants
        received = "".join(c.text for c in chunks).encode()
        # The worker's running count on its last chunk (one a word here), never above the
        # bytes received + 1 (docs/protocol.md, "Countersigning without a tokenizer").
        vouched = min(tokens_sent, len(received) + 1) if received else 0
        await eventually(lambda: len(cheater.outcomes()) == 1)
        (sent,) = cheater.outcomes()
        assert (sent["code"], sent["completion_tokens"]) == ("OK", MAX_TOKENS)
        await eventually(closed(coordinator, grant.job_id))
        row = await job_row(coordinator, grant.job_id)
        assert row.client_completion_tokens == vouched
        # Long past the countersign deadline and the expiry, nothing more moves.
        await sweep_at(coordinator, datetime.now(UTC) + timedelta(days=1))
        charge = formula(grant, PROMPT_TOKENS, vouched)
        if tokens_sent == 0:
            assert charge == 0
        await assert_charged(cheater, user, grant.job_id, charge, disputed=True)


async def test_a_running_count_inflated_then_cut_is_bounded_by_the_bytes_received(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: every chunk's running completion_tokens says 2^32-1, the stream is cut after
    two words, and the receipt claims max_tokens. Protection: a client whose stream is cut
    vouches for the lower of the running count and the bytes it received + 1 (an honest
    tokenizer makes no more tokens than bytes), and settlement charges the lower of the
    two sides. Trusting the running count would vouch for (and charge) max_tokens."""
    user = Identity.generate()
    async with cheater_factory(database_url, "inflate-running", "--abort-after", "2") as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is not None and len(chunks) == 2  # cut after two words
        (grant,) = grants
        vouched = len("".join(c.text for c in chunks).encode()) + 1
        assert vouched < MAX_TOKENS
        await eventually(closed(coordinator, grant.job_id))
        row = await job_row(coordinator, grant.job_id)
        assert row.client_completion_tokens == vouched
        await sweep_at(coordinator, datetime.now(UTC) + timedelta(days=1))
        await assert_charged(
            cheater, user, grant.job_id, formula(grant, PROMPT_TOKENS, vouched), disputed=True
        )


async def test_a_receipt_for_a_job_never_presented_is_refused(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: the worker learns the id of a job authorized for it but never streamed, and
    submits receipts for it: without a presentation, and with one it signed itself.
    Protection: the coordinator records a receipt only with the job's user's signed
    presentation (PERMISSION_DENIED otherwise). Without it the receipt would settle on its
    own at the countersign deadline, which the sweep below passes."""
    user = Identity.generate()
    async with cheater_factory(database_url, "unpresented") as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grant = await troop.coordinator.authorize(MODEL, max_tokens=MAX_TOKENS)
        assert grant.node_id == cheater.node_id
        starter = coordinator.settings.starter_millicredits
        assert await coordinator.ledger.balance(user.public_key_hex) == (
            starter - grant.reserved_millicredits,
            grant.reserved_millicredits,
        )
        cheater.tell(grant.job_id)
        await eventually(lambda: cheater.alive() and len(cheater.outcomes()) == 2)
        for receipt in cheater.outcomes():
            assert receipt["job_id"] == grant.job_id
            assert receipt["code"] == "PERMISSION_DENIED", receipt
        assert [r["presented"] for r in cheater.outcomes()] == [False, True]
        row = await job_row(coordinator, grant.job_id)
        assert row.status == JobStatus.OPEN.value and row.node_duration_ms is None
        # Past the countersign deadline and the job's expiry: the reservation returns whole.
        await sweep_at(coordinator, row.expires_at + timedelta(seconds=1))
        row = await job_row(coordinator, grant.job_id)
        assert (row.status, row.charged_millicredits) == (JobStatus.EXPIRED.value, 0)
        assert await coordinator.ledger.balance(user.public_key_hex) == (starter, 0)
        assert await coordinator.ledger.balance(cheater.owner) == (0, 0)
        report = await coordinator.ledger.audit()
        assert report.ok and report.unreceipted_charges == []


async def test_a_second_receipt_after_settlement_changes_nothing(
    cheater_factory, database_url: str, eventually
) -> None:
    """Cheat: after its honest receipt settled, the worker submits a second one for the
    same job (same presentation) claiming max_tokens and 100× the time. Protection: a
    job's first receipt is kept once (already_settled); no balance, entry, claim or
    dispute moves."""
    user = Identity.generate()
    async with cheater_factory(database_url, "resend") as cheater:
        coordinator = cheater.coordinator
        async with TroopClient(coordinator.address, user) as troop:
            grants = spy_on_grants(troop)
            chunks, error = await stream(troop)
        assert error is None and received_tokens(chunks) == ANSWER_TOKENS
        (grant,) = grants
        await eventually(closed(coordinator, grant.job_id))
        charge = formula(grant, PROMPT_TOKENS, ANSWER_TOKENS)
        await assert_charged(cheater, user, grant.job_id, charge, disputed=False)
        before = await job_row(coordinator, grant.job_id), await entry_count(coordinator)

        cheater.tell(grant.job_id)
        await eventually(lambda: cheater.alive() and len(cheater.outcomes()) == 2)
        first, second = cheater.outcomes()
        assert (first["completion_tokens"], second["completion_tokens"]) == (
            ANSWER_TOKENS,
            MAX_TOKENS,
        )
        assert second["code"] == "OK" and second["already_settled"] is True
        assert second["settlement"] == "SETTLEMENT_KIND_CHARGED"
        assert second["charged_millicredits"] == charge
        after = await job_row(coordinator, grant.job_id), await entry_count(coordinator)
        columns = [c.key for c in Job.__table__.columns]
        assert [getattr(after[0], c) for c in columns] == [getattr(before[0], c) for c in columns]
        assert after[1] == before[1]
        await assert_charged(cheater, user, grant.job_id, charge, disputed=False)


async def test_a_proof_reporting_one_millisecond_or_over_garbage_sets_nothing(
    cheater_factory, sqlite_url: str, eventually
) -> None:
    """Cheat: the worker process runs proofs of hardware that report 1 ms: one committed
    over garbage (opened consistently), one over the real product. Protection: the
    coordinator checks the opened rows against the seed (the garbage proof is refused
    FAILED_PRECONDITION, the multiplier unchanged) and times the proof itself (the real
    one gets the multiplier of the coordinator's measured time, not of 1 ms)."""
    proof = {
        "challenge_interval_s": 0.0,
        "proof_rows": 128,
        "proof_cols": 128,
        "proof_calibration_inner": 4096,
        "proof_min_inner": 1024,
        "proof_max_inner": 4096,
    }
    async with cheater_factory(sqlite_url, "proof", **proof) as cheater:
        async with CoordinatorClient(cheater.coordinator.address) as probe:

            async def listed_multiplier() -> float:
                nodes = (await probe.list_nodes(MODEL)).nodes
                return next(n.multiplier for n in nodes if n.node_id == cheater.node_id)

            before = await listed_multiplier()
            cheater.tell("garbage")
            await eventually(lambda: cheater.alive() and cheater.outcomes("proof"))
            (garbage,) = cheater.outcomes("proof")
            assert garbage["code"] == "FAILED_PRECONDITION", garbage
            assert await listed_multiplier() == before

            cheater.tell("fast")
            await eventually(lambda: cheater.alive() and len(cheater.outcomes("proof")) == 2)
            fast = cheater.outcomes("proof")[1]
            assert fast["code"] == "OK", fast
            rows, inner, cols = fast["shape"]
            measured = fast["measured_ms"]
            # The coordinator's clock ran for the whole product (less at most a tenth).
            assert measured >= 0.9 * fast["elapsed_ms"] - 1 and measured > 1
            reference = reference_tflops(cheater.coordinator.settings.benchmark_reference_ms)
            # The speed is of the measured time (rounded to the ms in the answer) ...
            tflops = fast["tflops"]
            assert tflops == pytest.approx(
                tflops_for(rows, inner, cols, measured), rel=1 / measured
            )
            assert fast["multiplier"] == pytest.approx(multiplier_for(tflops, reference))
            # ... not of the 1 ms reported.
            assert fast["multiplier"] < multiplier_for(tflops_for(rows, inner, cols, 1), reference)

            async def listed_as_measured() -> bool:
                return await listed_multiplier() == pytest.approx(fast["multiplier"])

            await eventually(listed_as_measured)


@pytest.mark.parametrize("lie", ["1e300", "nan", "-5", "99999999999"])
async def test_a_lying_overhead_header_is_ignored_and_the_job_is_unharmed(
    cheater_factory, database_url: str, lie: str
) -> None:
    """Cheat: the worker's `x-troop-overhead-ms` (its own share of the time to the first
    token, which the sidecar adds into its HTTP header) is absurd: 10^300 ms, NaN,
    negative, or three years. Protection: the client reads only a finite number from 0
    to an hour (`request_context.MAX_OVERHEAD_MS`), else none; the answer is unharmed."""
    async with cheater_factory(database_url, "overhead", "--overhead", lie) as cheater:
        async with TroopClient(cheater.coordinator.address, Identity.generate()) as troop:
            chunks, error = await stream(troop)
    assert error is None and received_tokens(chunks) == ANSWER_TOKENS
    overheads = [c.overhead for c in chunks if c.overhead is not None]
    assert overheads, "the SDK reports the protocol's overhead on the first chunk"
    assert all(o.worker_ms is None for o in overheads)


async def test_a_node_that_fails_before_its_first_token_is_skipped_and_refunded_at_once(
    cheater_factory, sqlite_url: str, tmp_path: Path, eventually
) -> None:
    """Cheat: the worker sends its node proof, then aborts every stream before any token
    (and claims max_tokens in its receipt). Protection: the SDK takes the answer to another
    node (ADR 47) and countersigns the aborted job with 0, which returns its whole
    reservation at once, long before the ticket expires. The caller sees only answers."""
    user = Identity.generate()
    async with cheater_factory(sqlite_url, "abort", "--abort-after", "0") as cheater:
        address = cheater.coordinator.address
        honest_settings = worker_settings(tmp_path, "honest", address)
        async with Worker(honest_settings) as honest, CoordinatorClient(address) as probe:

            async def both_listed() -> bool:
                nodes = {n.node_id for n in (await probe.list_nodes(MODEL)).nodes}
                return {cheater.node_id, honest.node_id} <= nodes

            await eventually(both_listed, timeout_s=20)
            async with TroopClient(address, user) as troop:
                grants = spy_on_grants(troop)
                for _ in range(8):  # the two idle nodes are picked at random
                    chunks, error = await stream(troop)
                    assert error is None, error
                    assert "".join(c.text for c in chunks) == f"You said: {TEXT}"
                skipped = [g for g in grants if g.node_id == cheater.node_id]
                assert skipped, "the coordinator never picked the aborting node"
                for grant in skipped:  # refunded now, not at the ticket's expiry
                    job = await troop.job(grant.job_id)
                    # Settled for nothing: refunded (the 0 came first) or charged 0 (the
                    # receipt did, and lost to the client's count).
                    assert job.settled and job.charged_millicredits == 0
                    assert job.settled_at is not None and job.settled_at < datetime.fromtimestamp(
                        grant.expires_at.seconds, UTC
                    )

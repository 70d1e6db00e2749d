"""A cheating worker: the real `troop_worker.app.Worker` (fake engine, node key on disk,
heartbeating to a real coordinator) with ONE cheat switched on.

    python -m tests.security.cheating_worker --cheat inflate --coordinator HOST:PORT \\
        --data-dir DIR --owner HEX --ready ready.json --outcomes outcomes.jsonl

The cheats are made by swapping two of the worker's parts in this process before it
starts: its ReceiptSender (`CheatingReceipts`: rewrites the JobRecord before it is
signed, holds it back, or sends more than one) and its InferenceServicer
(`CheatingServicer`: remembers each job's ticket; `abort` walks away from the
stream). Everything else is the worker as shipped: the receipt is signed with the
node key and submitted by the real sender, which logs a refusal.

- inflate      the receipt claims 10× the completion tokens (at most the ticket's max_tokens)
- overflow     three receipts: duration_ms 2^64-1; completion 2^32-1; prompt 2^32-1
- hold         the receipt is held back `--hold-s` seconds and claims that time as the job's
- overbound    a receipt with max_tokens + 1 completion tokens, then one with max_tokens
- abort        the node proof is sent, then the stream aborts after `--abort-after` tokens
               (0: before any); the receipt claims max_tokens
- inflate-running  as abort, but every chunk's running completion_tokens says 2^32-1
- unpresented  for each job id read from stdin: receipts for a job never presented to it
               (none; one "signed" by the node's own key)
- resend       honest; for each job id read from stdin: a second receipt claiming max_tokens
- overhead     honest, but the first chunk's `x-troop-overhead-ms` says `--overhead`
               (default 1e300: finite, absurd)
- proof        for each line read from stdin ("fast" or "garbage"): a proof of hardware
               reporting 1 ms, of the real product (fast) or of garbage opened consistently

The process writes `--ready` (JSON: address, node_id, node_public_key) once it serves,
and one JSON line to `--outcomes` per receipt it submitted and per proof it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import troop_worker.app as worker_app
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.merkle import MerkleTree
from troop_common.node_proof import new_nonce
from troop_common.presentation import sign_presentation
from troop_common.proto import coordinator_pb2 as pb
from troop_common.request_context import OVERHEAD, REQUEST_ID, current
from troop_common.shutdown import until_signalled
from troop_common.tickets import Ticket
from troop_worker.auth import current_ticket
from troop_worker.engine.fake import FakeEngine
from troop_worker.engine.types import GenerationRequest
from troop_worker.hardware_proof import openings
from troop_worker.presentation import Presented
from troop_worker.proof_compute import Product, compute
from troop_worker.receipts import JobRecord, ReceiptSender
from troop_worker.service import InferenceServicer
from troop_worker.settings import WorkerSettings

MODEL = "smollm2-135m-instruct"
CHEATS = (
    "overhead",
    "inflate",
    "overflow",
    "hold",
    "overbound",
    "abort",
    "inflate-running",
    "unpresented",
    "resend",
    "proof",
)
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# The fake engine's pace: one word (one token) per this many seconds.
TOKEN_DELAY_S = 0.01

log = logging.getLogger("troop.cheat")
# The call being served (the servicer's _run is not handed its context).
CALL: contextvars.ContextVar[grpc.aio.ServicerContext] = contextvars.ContextVar("call")


@dataclasses.dataclass
class State:
    """What the cheat knows across the worker's parts."""

    cheat: str
    outcomes: Path
    hold_s: float = 30.0
    abort_after: int = 0
    overhead: str = "1e300"
    tickets: dict[str, Ticket] = dataclasses.field(default_factory=dict)
    records: dict[str, JobRecord] = dataclasses.field(default_factory=dict)

    def write(self, entry: dict[str, Any]) -> None:
        with self.outcomes.open("a") as out:
            out.write(json.dumps(entry) + "\n")


STATE: State  # set in main(), before the worker starts


class RecordingClient:
    """The sender's coordinator client, writing each receipt's answer to the outcomes."""

    def __init__(self, client: CoordinatorClient) -> None:
        self._client = client

    async def submit_receipt(self, request: pb.SubmitReceiptRequest) -> pb.SubmitReceiptResponse:
        receipt = pb.JobReceipt.FromString(request.receipt)
        entry: dict[str, Any] = {
            "kind": "receipt",
            "job_id": receipt.job_id,
            "prompt_tokens": receipt.usage.prompt_tokens,
            "completion_tokens": receipt.usage.completion_tokens,
            "duration_ms": receipt.duration_ms,
            "presented": bool(receipt.presentation),
        }
        try:
            response = await self._client.submit_receipt(request)
        except TroopError as exc:
            STATE.write({**entry, "code": exc.code.name, "message": exc.message})
            raise
        STATE.write(
            {
                **entry,
                "code": "OK",
                "settlement": pb.SettlementKind.Name(response.kind),
                "charged_millicredits": response.charged_millicredits,
                "already_settled": response.already_settled,
            }
        )
        return response


class CheatingReceipts(ReceiptSender):
    """The worker's ReceiptSender, with the cheat applied to each job's record."""

    def __init__(self, client: CoordinatorClient, *args: Any, **kwargs: Any) -> None:
        super().__init__(RecordingClient(client), *args, **kwargs)  # type: ignore[arg-type]
        self._tasks: set[asyncio.Task[None]] = set()

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        await super().drain(timeout_s)

    def submit(self, record: JobRecord) -> None:
        STATE.records[record.job_id] = record
        self.spawn(self._cheat(record, STATE.tickets[record.job_id]))

    async def send_record(self, record: JobRecord) -> None:
        """Sign `record` as it is and send it now (no queue, no outbox)."""
        await self._send(self.sign(record))

    def spawn(self, work: Any) -> None:
        """Run `work` as one of the sender's tasks (drained at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cheat(self, record: JobRecord, ticket: Ticket) -> None:
        replace = dataclasses.replace
        cheat = STATE.cheat
        if cheat == "inflate":
            completion = min(10 * record.completion_tokens, ticket.max_tokens)
            await self.send_record(replace(record, completion_tokens=completion))
        elif cheat == "overflow":
            await self.send_record(replace(record, duration_ms=UINT64_MAX))
            await self.send_record(replace(record, prompt_tokens=0, completion_tokens=UINT32_MAX))
            await self.send_record(replace(record, prompt_tokens=UINT32_MAX, completion_tokens=0))
        elif cheat == "hold":
            held = time.monotonic()
            await asyncio.sleep(STATE.hold_s)
            waited_ms = round((time.monotonic() - held) * 1000)
            await self.send_record(replace(record, duration_ms=record.duration_ms + waited_ms))
        elif cheat == "overbound":
            await self.send_record(replace(record, completion_tokens=ticket.max_tokens + 1))
            await self.send_record(replace(record, completion_tokens=ticket.max_tokens))
        elif cheat in ("abort", "inflate-running"):
            await self.send_record(
                replace(record, completed=True, completion_tokens=ticket.max_tokens)
            )
        else:  # unpresented, resend, proof: the stream's own receipt is honest
            await self.send_record(record)


class CheatingServicer(InferenceServicer):
    """The worker's servicer; remembers each job's ticket, and aborts for `abort`."""

    async def ChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ticket = current_ticket.get()
        if ticket is not None:
            STATE.tickets[ticket.job_id] = ticket
        CALL.set(context)
        async for response in super().ChatCompletion(request, context):
            yield response

    async def _run(
        self, ticket: Ticket, generation: GenerationRequest, presented: Presented
    ) -> AsyncIterator[Any]:
        honest = super()._run(ticket, generation, presented)
        if STATE.cheat == "overhead":
            try:
                async for response in honest:
                    info = current.get()  # its headers go out with this first chunk
                    if info is not None:
                        info.initial_metadata[:] = [
                            (k, STATE.overhead if k == OVERHEAD else v)
                            for k, v in info.initial_metadata
                        ]
                    yield response
            finally:
                await honest.aclose()
            return
        if STATE.cheat not in ("abort", "inflate-running"):
            try:
                async for response in honest:
                    yield response
            finally:
                await honest.aclose()
            return
        sent = 0
        try:
            async for response in honest:
                if sent == STATE.abort_after:
                    break
                if STATE.cheat == "inflate-running":
                    response.completion_tokens = UINT32_MAX
                yield response
                sent += 1
            if sent == 0:
                # The node proof goes out (the initial metadata), but no token does.
                info = current.get()
                assert info is not None
                await CALL.get().send_initial_metadata(
                    [(REQUEST_ID, info.request_id), *info.initial_metadata]
                )
        finally:
            await honest.aclose()  # the honest part's receipt is submitted now
        raise TroopError(f"the node walked away after {sent} tokens")


def garbage_product(rows: int, cols: int) -> Product:
    """A C that is not A·B, committed to and opened consistently."""
    c = np.random.default_rng(7).integers(-500, 500, (rows, cols)).astype(np.float32)
    return Product(c, MerkleTree.over_rows(c), "cpu", "fp32", 1.0)


async def run_proof(client: CoordinatorClient, node_id: str, kind: str) -> dict[str, Any]:
    """One proof of hardware that reports 1 ms; `kind` fast: of the real product."""
    challenge = await client.get_challenge(node_id)
    seed = (await client.start_challenge(node_id, challenge.challenge_id)).seed
    rows, inner, cols = challenge.rows, challenge.inner, challenge.cols
    if kind == "garbage":
        product = garbage_product(rows, cols)
    else:
        product = await asyncio.to_thread(compute, seed, rows, inner, cols, device="cpu")
    entry: dict[str, Any] = {
        "kind": "proof",
        "proof": kind,
        "shape": [rows, inner, cols],
        "elapsed_ms": product.elapsed_ms,
    }
    try:
        named = await client.commit_proof(
            pb.CommitProofRequest(
                node_id=node_id,
                challenge_id=challenge.challenge_id,
                merkle_root=product.tree.root,
                precision=product.precision,
                reported_ms=1,  # the lie
            )
        )
        answer = await client.verify_proof(
            pb.VerifyProofRequest(
                node_id=node_id,
                challenge_id=challenge.challenge_id,
                openings=openings(product, list(named.rows)),
            )
        )
    except TroopError as exc:
        return {**entry, "code": exc.code.name, "message": exc.message}
    return {
        **entry,
        "code": "OK",
        "measured_ms": answer.measured_ms,
        "multiplier": answer.multiplier,
        "tflops": answer.tflops,
    }


async def _one_after_another(receipts: CheatingReceipts, records: list[JobRecord]) -> None:
    """Send `records` in this order, each once the last was answered."""
    for record in records:
        await receipts.send_record(record)


async def on_line(worker: worker_app.Worker, line: str) -> None:
    """What the cheat does with a line from the test (a job id, or a proof kind)."""
    client, node = worker._client, worker.identity
    receipts = worker._receipts
    assert client is not None and node is not None and isinstance(receipts, CheatingReceipts)
    if STATE.cheat == "unpresented":
        # A job this node never saw presented: no presentation at all, then one the node
        # "signs for the user" with its own key.
        bare = JobRecord(line, True, 1000, 3, 5)
        nonce = new_nonce()
        forged = bytes.fromhex(sign_presentation(node.key, line, node.node_id, nonce))
        forged_record = dataclasses.replace(bare, presentation=forged, client_nonce=nonce)
        receipts.spawn(_one_after_another(receipts, [bare, forged_record]))
    elif STATE.cheat == "resend":
        first, ticket = STATE.records[line], STATE.tickets[line]
        more = dataclasses.replace(
            first, completion_tokens=ticket.max_tokens, duration_ms=first.duration_ms * 100
        )
        receipts.spawn(receipts.send_record(more))
    elif STATE.cheat == "proof":
        STATE.write(await run_proof(client, node.node_id, line))
    else:
        log.warning("cheat %s takes no input; ignored %r", STATE.cheat, line)


async def read_lines(worker: worker_app.Worker) -> None:
    """Act on each line of stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if text := line.decode().strip():
            await on_line(worker, text)


async def run(args: argparse.Namespace) -> None:
    settings = dataclasses.replace(
        WorkerSettings.from_env({}),
        port=0,
        coordinator=args.coordinator,
        data_dir=Path(args.data_dir),
        engine="fake",
        owner_public_key=args.owner,
        heartbeat_interval_s=1.0,
        receipt_backoff_s=0.05,
        shutdown_grace_s=0.5,
        rate_limits="",
    )
    # The worker's own parts, swapped for the cheat's before it builds them.
    worker_app.ReceiptSender = CheatingReceipts  # type: ignore[misc]
    worker_app.InferenceServicer = CheatingServicer  # type: ignore[misc]
    loop = asyncio.get_running_loop()
    engine = FakeEngine([MODEL], delay_s=TOKEN_DELAY_S)
    async with until_signalled() as stopping, worker_app.Worker(settings, engine=engine) as worker:
        assert worker.identity is not None
        ready = {
            "address": worker.address,
            "node_id": worker.node_id,
            "node_public_key": worker.identity.public_key_hex,
        }
        partial = Path(args.ready + ".partial")
        partial.write_text(json.dumps(ready))
        os.replace(partial, args.ready)
        log.info("cheating worker (%s) serving on %s", STATE.cheat, worker.address)
        lines = loop.create_task(read_lines(worker))
        ending = await stopping.wait(asyncio.shield(lines))
        if not ending.signalled:
            lines.result()  # a failure in the cheat itself ends the process loudly
            await stopping.wait()  # stdin closed: serve on until signalled
        lines.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lines


def main(argv: list[str] | None = None) -> None:
    global STATE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cheat", choices=CHEATS, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--owner", required=True, help="hex public key credited for the work")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--outcomes", required=True)
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--abort-after", type=int, default=0)
    parser.add_argument("--overhead", default="1e300", help="for cheat overhead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    STATE = State(
        args.cheat,
        Path(args.outcomes),
        hold_s=args.hold_s,
        abort_after=args.abort_after,
        overhead=args.overhead,
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

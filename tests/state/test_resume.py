"""An answer survives the worker that started it: a real worker is killed (SIGKILL) in the
middle of a streamed answer and the SDK resumes it on another worker from the text shown so
far; the caller sees one unbroken answer, equal to the uninterrupted one, no word lost or
repeated at the seam, and each node's job is its own: the killed node, which never sends its
receipt, is paid for what reached the client from it (docs/adr/0048)."""

from __future__ import annotations

import signal
import time

from troop_client import ChatOptions, ClientSettings, Message, TroopClient
from troop_common.keys import Identity

from . import conftest as state

WORDS = " ".join(f"w{n}" for n in range(120))
EXPECTED = f"You said: {WORDS}"  # the fake engine's answer, one word per token
KILL_AFTER = 25  # chunks shown before the serving worker dies
STARTER_MILLICREDITS = 3_600_000  # the coordinator's default starter credits


async def test_an_answer_resumes_on_another_node_when_its_node_is_killed_mid_stream(
    network: state.Network, eventually
) -> None:
    # The killed node's job settles on the client's countersignature this soon.
    coordinator = await network.coordinator(
        TROOP_COUNTERSIGN_SECONDS="1", TROOP_SWEEP_INTERVAL_SECONDS="0.2"
    )
    workers = {
        name: network.fake_worker(coordinator.address, name) for name in ("node-a", "node-b")
    }
    settings = ClientSettings(coordinator=coordinator.address)
    async with TroopClient(coordinator.address, Identity.generate(), settings) as client:

        async def both_listed() -> bool:
            for worker in workers.values():
                assert worker.popen.poll() is None, worker.output()
            return len(await client.nodes(state.MODEL)) == 2

        await eventually(both_listed, timeout_s=60)
        chunks, killed, killed_at, resumed_after = [], "", 0.0, None
        options = ChatOptions(temperature=0.0, max_tokens=400)
        async for chunk in client.chat([Message("user", WORDS)], options=options):
            chunks.append(chunk)
            if len(chunks) == KILL_AFTER:
                killed = (await client.job(chunk.job_id)).node_id
                workers[killed].kill(signal.SIGKILL)
                killed_at = time.monotonic()
            elif killed and resumed_after is None and chunk.job_id != chunks[0].job_id:
                resumed_after = time.monotonic() - killed_at
        print(f"resumed {resumed_after:.3f} s after the worker was killed")

        assert "".join(c.text for c in chunks) == EXPECTED  # one answer, no seam
        jobs = list(dict.fromkeys(c.job_id for c in chunks))
        assert len(jobs) == 2, "the answer came from two jobs"
        second = await client.job(jobs[1])
        assert second.node_id != killed
        # The caller's usage covers the whole answer, as if one node had given it.
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(EXPECTED.split())
        assert chunks[-1].finish_reason == "stop"

        async def both_charged() -> bool:
            return all([(await client.job(job)).state == "charged" for job in jobs])

        await eventually(both_charged, timeout_s=30)
        # The killed node never sent its receipt: it is paid what the client vouched it
        # received from it: the worker's running count on the last chunk that arrived (one
        # word, one token on the fake engine), well under the bytes bound, at the job's price.
        killed_job = await client.coordinator.get_job(jobs[0])
        assert not killed_job.receipt_received and killed_job.countersigned
        vouched = sum(1 for c in chunks if c.job_id == jobs[0] and c.text)
        price = killed_job.completion_millicredits_per_1k_tokens
        charge = min(killed_job.reserved_millicredits, (vouched * price + 500) // 1000)
        assert killed_job.charged_millicredits == charge > 0
        # The user pays the two jobs and nothing more.
        resumed_charge = (await client.job(jobs[1])).charged_millicredits
        balance = await client.balance()
        assert (balance.balance_millicredits, balance.reserved_millicredits) == (
            STARTER_MILLICREDITS - charge - resumed_charge,
            0,
        )

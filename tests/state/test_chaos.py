"""Chaos: three real workers, fifty streamed requests, and a random worker killed (SIGKILL)
every couple of seconds, then started again. Every request completes (resumed or failed over)
or ends with a clean TroopError, none hangs past its deadline, the ledger audit passes, no
user is charged for output they did not receive, and no worker goes unpaid for output it
delivered."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections import Counter, defaultdict

from troop_client import ChatOptions, ClientSettings, Message, TroopClient
from troop_common.errors import TroopError
from troop_common.keys import Identity

from . import conftest as state

WORKERS = ("node-a", "node-b", "node-c")
REQUESTS = 50
AT_ONCE = 5
USERS = 5
KILL_EVERY_S = 2.0  # the chaos' pace, not a wait for anything
DEADLINE_S = 90.0  # no request may take longer
PROMPT = " ".join(f"w{n}" for n in range(40))
EXPECTED = f"You said: {PROMPT}"  # the fake engine's answer, one word per token


async def test_fifty_requests_survive_workers_killed_at_random(
    network: state.Network, eventually
) -> None:
    coordinator = await network.coordinator(
        TROOP_RATE_LIMITS="",  # the chaos, not the limits, is under test
        TROOP_TICKET_TTL_SECONDS="20",
        TROOP_SETTLE_GRACE_SECONDS="1",
        TROOP_COUNTERSIGN_SECONDS="2",
        TROOP_SWEEP_INTERVAL_SECONDS="0.5",
    )

    def start(name: str, run: int) -> state.Process:  # the same node each run
        return network.fake_worker(coordinator.address, name, f"{name}-{run}.log")

    workers = {name: start(name, 0) for name in WORKERS}
    users = [
        TroopClient(
            coordinator.address,
            Identity.generate(),
            ClientSettings(coordinator=coordinator.address, node_attempts=3),
        )
        for _ in range(USERS)
    ]
    try:

        async def all_listed() -> bool:
            return len(await users[0].nodes(state.MODEL)) == len(WORKERS)

        await eventually(all_listed, timeout_s=60)
        kills = 0
        done = asyncio.Event()

        async def chaos() -> None:
            nonlocal kills
            rng = random.Random(7)
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), KILL_EVERY_S)
                if done.is_set():
                    return
                name = rng.choice(WORKERS)
                workers[name].kill(signal.SIGKILL)
                await workers[name].wait()
                kills += 1
                workers[name] = start(name, kills)

        slots = asyncio.Semaphore(AT_ONCE)
        options = ChatOptions(temperature=0.0, max_tokens=100)

        async def one(n: int) -> tuple[str, list]:
            chunks: list = []
            async with slots:
                try:
                    async with asyncio.timeout(DEADLINE_S):
                        async for chunk in users[n % USERS].chat(
                            [Message("user", PROMPT)], options=options
                        ):
                            chunks.append(chunk)
                except TroopError as exc:
                    return f"error {type(exc).__name__}", chunks
                except TimeoutError:
                    return "hung", chunks
            text = "".join(c.text for c in chunks)
            return ("answered" if text == EXPECTED else f"wrong {text!r}"), chunks

        chaos_task = asyncio.create_task(chaos())
        results = await asyncio.gather(*(one(n) for n in range(REQUESTS)))
        done.set()
        await chaos_task
        outcomes = Counter(outcome for outcome, _ in results)
        print(f"{kills} workers killed; outcomes: {dict(outcomes)}")
        assert kills >= 2, "the chaos never struck"
        assert not [o for o in outcomes if o == "hung" or o.startswith("wrong")], outcomes
        assert outcomes["answered"] >= REQUESTS // 2, outcomes

        # What each job delivered to its user, from the chunks the callers saw.
        delivered: dict[str, int] = defaultdict(int)
        owner: dict[str, TroopClient] = {}
        for n, (_, chunks) in enumerate(results):
            for chunk in chunks:
                delivered[chunk.job_id] += bool(chunk.text)
                owner[chunk.job_id] = users[n % USERS]
        for user in users:  # jobs no chunk came from (failed before their first token)
            page = await user.history(page_size=100)
            for entry in page.items:
                if entry.job_id is not None:
                    owner.setdefault(entry.job_id, user)

        async def all_settled() -> bool:
            for job_id, user in owner.items():
                if not (await user.job(job_id)).settled:
                    return False
            return True

        await eventually(all_settled, timeout_s=120, interval_s=0.5)
        for job_id, user in owner.items():
            job = await user.coordinator.get_job(job_id)
            got = delivered.get(job_id, 0)
            most = (
                job.max_prompt_tokens * job.prompt_millicredits_per_1k_tokens
                + got * job.completion_millicredits_per_1k_tokens
                + 500
            ) // 1000
            if got == 0:
                assert job.charged_millicredits == 0, (job_id, "charged for nothing")
            else:
                # Never charged for completion tokens the user did not receive...
                assert job.charged_millicredits <= most, (job_id, got)
                # ...and the node that delivered them is paid.
                assert job.charged_millicredits > 0, (job_id, got, "delivered but unpaid")
    finally:
        for user in users:
            await user.close()
    await network.audit_ledger()

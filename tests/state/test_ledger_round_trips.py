"""On PostgreSQL each ledger call is one round trip, and a dead pooled connection is replaced.

The coordinator's engine talks to the real PostgreSQL through a TCP proxy that reads
the client's side of the wire protocol and counts its round trips (Query and Sync
messages: each makes the server answer). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from troop_common.errors import TroopError
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, driver_connection, session_factory
from troop_coordinator.ledger import ClientClaim, Ledger, NewJob, NodeClaim, Outcome
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.registry import LiveNode

MODEL = "smollm2-135m-instruct"
CAP = 3


class CountingProxy:
    """Forwards TCP to PostgreSQL; counts the frontend's Query ('Q') and Sync ('S')
    messages, the ones the server answers: one each per round trip."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.round_trips = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for task in (self._frontend(reader, up_writer), self._pipe(up_reader, writer)):
            spawned = asyncio.ensure_future(task)
            self._tasks.add(spawned)

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # The startup packet (no type byte; ssl=disable: no SSLRequest before it).
            head = await reader.readexactly(4)
            writer.write(head + await reader.readexactly(struct.unpack("!I", head)[0] - 4))
            while True:
                head = await reader.readexactly(5)
                body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
                if head[:1] in (b"Q", b"S"):
                    self.round_trips += 1
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxied(postgres_url: str) -> AsyncIterator[tuple[Ledger, CountingProxy, str]]:
    url = make_url(postgres_url)
    proxy = CountingProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    # libpq's spelling, taken as asyncpg's ssl=disable (the proxy reads plain bytes).
    through = url.set(host="127.0.0.1", port=port, query={"sslmode": "disable"})
    engine = create_engine(through.render_as_string(hide_password=False), pool_size=1)
    await migrate.upgrade(engine)
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    yield Ledger(session_factory(engine), starter_millicredits=10**6), proxy, admin
    await engine.dispose()
    await proxy.close()


async def _job(ledger: Ledger, user: str, node_id: str, now: datetime) -> NewJob:
    return NewJob(
        secrets.token_hex(8), user, node_id, MODEL, 10_000, now, now + timedelta(minutes=5),
        100, 100, 0, 100_000,
    )  # fmt: skip


async def test_each_ledger_call_is_one_round_trip(proxied) -> None:
    ledger, proxy, _ = proxied
    now = datetime.now(UTC)
    user, owner = secrets.token_hex(32), secrets.token_hex(32)
    await ledger.ensure_user_with_grant(user, now)
    node = LiveNode("n1", secrets.token_hex(32), "h:1", (MODEL,))
    await NodeDirectory(ledger.sessions).record_heartbeat(node, owner, now)

    async def cycle() -> dict[str, int]:
        """One job through the ledger: how many round trips each call took."""
        counts: dict[str, int] = {}

        async def counted(name: str, call):
            before = proxy.round_trips
            result = await call
            counts[name] = proxy.round_trips - before
            return result

        job = await _job(ledger, user, "n1", now)
        # Authorize's whole ledger work: joined? under the cap? covered? then reserve.
        await counted("reserve", ledger.reserve(job, max_open_jobs=CAP))
        await counted(
            "countersign", ledger.record_countersignature(ClientClaim(job.job_id, user, 7, 9), now)
        )
        await counted("job_bounds", ledger.job_bounds(job.job_id))
        claim = NodeClaim(job.job_id, "n1", Outcome.COMPLETED, 0, 7, 5)
        settled = await counted("receipt", ledger.record_receipt(claim, now))
        assert settled.charged_millicredits == 700 and not settled.already_settled
        await counted("balance", ledger.balance(user))
        # A receipt left waiting for its countersignature, settled by the sweep.
        waiting = await _job(ledger, user, "n1", now)
        await ledger.reserve(waiting)
        await ledger.record_receipt(
            NodeClaim(waiting.job_id, "n1", Outcome.COMPLETED, 0, 3, 5), now
        )
        swept = await counted("sweep of one job", ledger.settle_overdue(now + timedelta(days=1)))
        assert [s.job_id for s in swept] == [waiting.job_id]
        return counts

    await cycle()  # the first use of each statement on a connection prepares it
    counts = await cycle()

    assert counts == {
        "reserve": 1,
        "countersign": 1,
        "job_bounds": 1,
        "receipt": 1,
        "balance": 1,
        "sweep of one job": 2,  # which jobs are overdue, then the one job
    }
    assert (await ledger.audit()).ok


async def test_each_refused_reservation_is_one_round_trip(proxied) -> None:
    """Not joined, over the cap, credits short: each refusal is the same one call, and
    writes nothing."""
    ledger, proxy, _ = proxied
    now = datetime.now(UTC)
    user, stranger = secrets.token_hex(32), secrets.token_hex(32)
    await ledger.ensure_user_with_grant(user, now)
    for _ in range(CAP):
        await ledger.reserve(await _job(ledger, user, "n1", now), max_open_jobs=CAP)
    before = await ledger.balance(user)

    async def refusal(job: NewJob, cap: int | None) -> tuple[str, int]:
        start = proxy.round_trips
        with pytest.raises(TroopError) as refused:
            await ledger.reserve(job, max_open_jobs=cap)
        return type(refused.value).__name__, proxy.round_trips - start

    for _ in range(2):  # the first use of the statement on the connection prepares it
        not_joined = await refusal(await _job(ledger, stranger, "n1", now), CAP)
        over_cap = await refusal(await _job(ledger, user, "n1", now), CAP)
        greedy = replace(await _job(ledger, user, "n1", now), reserved_millicredits=10**7)
        short = await refusal(greedy, None)

    assert not_joined == ("NotJoined", 1)
    assert over_cap == ("TooManyOpenJobs", 1)
    assert short == ("InsufficientCredits", 1)
    assert await ledger.balance(user) == before
    assert (await ledger.open_jobs(user))[0] == CAP
    assert await ledger.balance(stranger) == (0, 0)


async def test_a_pooled_connection_the_server_closed_is_replaced(proxied, eventually) -> None:
    ledger, _, admin_dsn = proxied
    now = datetime.now(UTC)
    user = secrets.token_hex(32)
    await ledger.ensure_user_with_grant(user, now)
    async with driver_connection(ledger._engine) as connection:
        pooled = connection  # the pool's only connection, back in the pool after this
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pooled.get_server_pid())
    finally:
        await admin.close()
    await eventually(pooled.is_closed)  # the driver saw the socket close

    # No pre-ping, yet the next calls get a live connection, not the dead one's error.
    await ledger.reserve(await _job(ledger, user, "n1", now))
    assert (await ledger.open_jobs(user))[0] == 1
    assert (await ledger.balance(user)) == (10**6 - 10_000, 10_000)

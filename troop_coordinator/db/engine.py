"""The async engine and session factory, with SQLite made safe for concurrent writers.

PostgreSQL (docs/adr/0034): a pool sized for the coordinator's concurrency
(`TROOP_DATABASE_POOL_SIZE` + `TROOP_DATABASE_MAX_OVERFLOW`) and no pre-ping:
a checkout costs no round trip. A connection the server closed (a restart, an
idle kill) is noticed locally at checkout (the driver saw the socket close) and
replaced; one that dies under a call is invalidated; connections are recycled
after `POOL_RECYCLE_S`; a connect gives up after `CONNECT_TIMEOUT_S`. What a
lost database means to callers: db.transactions (docs/adr/0050). TLS is
whatever the URL says (asyncpg's default `prefer`, or `?ssl=`/`?sslmode=`
disable, require, verify-full...): nothing here weakens it for any host.

SQLite: every transaction starts with BEGIN IMMEDIATE, so two transactions
never both read and then race to write (which SQLite answers with "database
is locked" instead of waiting); WAL lets readers run beside the writer;
foreign keys are switched on. One writer at a time is all SQLite allows, so
this process's transactions queue for it on an asyncio lock (one per engine,
FIFO, taken before BEGIN IMMEDIATE and given back when the connection returns
to the pool) instead of all polling in SQLite's busy handler, whose sleeps
grow to 100 ms; the busy timeout still queues writers of other processes
(`troop admin`, a second engine). Waiting longer than SQLITE_BUSY_TIMEOUT_S
for the lock fails like SQLite's own timeout. `reading()` connections take
neither (each statement reads its own WAL snapshot). The database file is
created 0600 before SQLite opens it (its directory 0700 when created here),
so its -wal and -shm, which SQLite creates with the database's mode, are 0600
too; looser existing ones are tightened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_

from troop_common.private_files import PRIVATE_DIR_MODE, tighten_file, touch_private

SQLITE_BUSY_TIMEOUT_S = 30
# Connections kept open, and opened beyond them under a burst (closed again once idle).
DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_OVERFLOW = 10
# A pooled connection older than this is replaced at checkout (idle-timeouts of
# proxies and firewalls drop connections silently; a closed socket is noticed sooner).
POOL_RECYCLE_S = 1800
# A connection attempt that takes longer fails (asyncpg's default is 60 s): a server that
# does not answer is UNAVAILABLE within a call's deadline, not a call hung past it.
CONNECT_TIMEOUT_S = 5
# The execution option that makes a SQLite connection skip BEGIN IMMEDIATE (reads only).
_NO_WRITE_LOCK = "troop_no_write_lock"
# Marks (in the pool record's record_info) a connection that holds its engine's writer lock.
_HOLDS_WRITER_LOCK = "troop_holds_writer_lock"
# admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or coming back.
# (Class 08, connection_exception, means the same.)
SERVER_AWAY_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def create_engine(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
) -> AsyncEngine:
    """An engine for `url` (sqlite+aiosqlite or postgresql+asyncpg)."""
    parsed = make_url(url)
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_recycle": POOL_RECYCLE_S}
    if parsed.get_backend_name() != "sqlite":
        engine = create_async_engine(
            _asyncpg_url(parsed), connect_args={"timeout": CONNECT_TIMEOUT_S}, **pool
        )
        event.listen(engine.sync_engine, "checkout", _replace_if_closed)
        event.listen(engine.sync_engine, "handle_error", _lost_is_a_disconnect)
        return engine
    memory = not parsed.database or parsed.database == ":memory:"
    if not memory:
        _private_sqlite_file(Path(parsed.database or "").expanduser())
    engine = create_async_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **({} if memory else pool)
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (it would BEGIN DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    _queue_writers(engine)
    return engine


def _queue_writers(engine: AsyncEngine) -> None:
    """This process's SQLite transactions wait for each other on an asyncio lock."""
    lock = asyncio.Lock()

    async def acquire() -> None:
        try:
            await asyncio.wait_for(lock.acquire(), SQLITE_BUSY_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(
                f"the SQLite database stayed locked by this process's other writers for "
                f"{SQLITE_BUSY_TIMEOUT_S} s"
            ) from None

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_NO_WRITE_LOCK):
            return
        info = connection.connection.record_info  # None only for a detached connection
        if info is not None and not info.get(_HOLDS_WRITER_LOCK):  # else: held already
            await_(acquire())
            info[_HOLDS_WRITER_LOCK] = True
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _give_back(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        # Returned to the pool (committed, rolled back, invalidated) or detached.
        if record is not None and record.record_info.pop(_HOLDS_WRITER_LOCK, False):
            lock.release()

    event.listen(engine.sync_engine, "checkin", _give_back)
    event.listen(engine.sync_engine, "detach", _give_back)


def _asyncpg_url(parsed: URL) -> URL:
    """libpq's `sslmode=` spelled as asyncpg's `ssl=` (same mode names); anything else as
    given. No TLS default is changed here: asyncpg's own is `prefer`."""
    query = dict(parsed.query)
    if "sslmode" in query:
        mode = query.pop("sslmode")
        query.setdefault("ssl", mode)
    return parsed.set(query=query)


def _replace_if_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Checkout without a round trip: a connection whose socket the driver saw close (a
    server restart, an idle kill) is replaced; the pool retries with a fresh one."""
    if record.driver_connection is not None and record.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def connection_lost(exc: BaseException) -> bool:
    """True when the database could not be reached or the connection died under the call
    (the server away, shutting down or starting), not when the server refused the work."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc)  # the test SQLAlchemy's dialect makes
    if isinstance(exc, asyncpg.InternalClientError):
        # The protocol is stuck: the server's goodbye reached an idle pooled connection
        # whose socket is not closed yet ("cannot switch to state ...").
        return True
    code = getattr(exc, "sqlstate", None)  # asyncpg's errors, and SQLAlchemy's wrapping
    if code is None:
        return isinstance(exc, OSError)  # refused, reset, timed out
    return bool(code.startswith("08") or code in SERVER_AWAY_SQLSTATES)


def _lost_is_a_disconnect(context: ExceptionContext) -> None:
    """A server's goodbye (shutdown, terminated) arrives before its socket closes, so the
    driver may not call the connection closed yet: SQLAlchemy is told it is lost, so the
    connection (and the pool's older ones) are not handed out again."""
    if connection_lost(context.original_exception):
        context.is_disconnect = True


def _private_sqlite_file(path: Path) -> None:
    """The database file 0600 (created empty if missing: SQLite takes that as a new
    database), and any -wal, -shm or -journal beside it tightened."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    touch_private(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten_file(path.with_name(path.name + suffix))


@contextlib.asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads outside any explicit transaction: each statement is its own
    snapshot and one round trip. PostgreSQL: autocommit (no BEGIN, no ROLLBACK on
    return); SQLite: no BEGIN IMMEDIATE, so a read takes no write lock. Never write
    through it: each statement would commit on its own."""
    async with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        else:
            await connection.execution_options(**{_NO_WRITE_LOCK: True})
        yield connection


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled PostgreSQL connection as the asyncpg connection itself, in autocommit: a
    statement is one round trip (asyncpg's prepared-statement cache) and nothing is sent
    at checkout or return. A call that fails without the server's answer (the connection
    died, or the call was cancelled mid-flight) invalidates the connection."""
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        try:
            yield driver
        except asyncpg.PostgresError as exc:
            # The server answered (the statement rolled back); the connection is fine
            # unless that answer was a goodbye (shutdown, terminated), whose socket may
            # not be closed yet.
            if connection_lost(exc) or (driver is not None and driver.is_closed()):
                await connection.invalidate()
            raise
        except BaseException:
            await connection.invalidate()
            raise


def dialect_name(executor: AsyncSession | AsyncConnection) -> str:
    """The name of the dialect ("sqlite", "postgresql") a session or connection uses."""
    if isinstance(executor, AsyncConnection):
        return executor.dialect.name
    if executor.bind is None:
        raise RuntimeError("the session is not bound to an engine")
    return executor.bind.dialect.name


def dialect_insert(executor: AsyncSession | AsyncConnection, table: Table) -> Any:
    """`INSERT INTO table` in the session's dialect, so `.on_conflict_do_nothing()` works
    on PostgreSQL and SQLite alike."""
    insert = postgresql.insert if dialect_name(executor) == "postgresql" else sqlite.insert
    return insert(table)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)

"""The async engine and session factory, with SQLite made safe for concurrent writers.

SQLite: every transaction starts with BEGIN IMMEDIATE, so two transactions
never both read and then race to write (which SQLite answers with "database
is locked" instead of waiting); a busy timeout makes writers queue; WAL lets
readers run beside the writer; foreign keys are switched on. The database
file is created 0600 before SQLite opens it (its directory 0700 when created
here), so its -wal and -shm, which SQLite creates with the database's mode,
are 0600 too; looser existing ones are tightened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from troop_common.private_files import PRIVATE_DIR_MODE, tighten_file, touch_private

SQLITE_BUSY_TIMEOUT_S = 30


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url` (sqlite+aiosqlite or postgresql+asyncpg)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        _private_sqlite_file(Path(parsed.database).expanduser())
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (it would BEGIN DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _private_sqlite_file(path: Path) -> None:
    """The database file 0600 (created empty if missing: SQLite takes that as a new
    database), and any -wal, -shm or -journal beside it tightened."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    touch_private(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten_file(path.with_name(path.name + suffix))


def dialect_name(session: AsyncSession) -> str:
    """The name of the dialect ("sqlite", "postgresql") `session` is bound to."""
    if session.bind is None:
        raise RuntimeError("the session is not bound to an engine")
    return session.bind.dialect.name


def dialect_insert(session: AsyncSession, table: Table) -> Any:
    """`INSERT INTO table` in the session's dialect, so `.on_conflict_do_nothing()` works
    on PostgreSQL and SQLite alike."""
    insert = postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
    return insert(table)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)

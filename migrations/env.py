"""Alembic environment, async-capable.

Two ways in:
- the coordinator (and tests) pass an open connection in
  `config.attributes["connection"]` (see troop_coordinator.db.migrate);
- the `alembic` command line takes the URL from `TROOP_DATABASE_URL`, or from
  `config.attributes["sqlalchemy.url"]` / the `sqlalchemy.url` option, and
  runs on an async engine.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from troop_coordinator.db.engine import create_engine
from troop_coordinator.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = (
        os.environ.get("TROOP_DATABASE_URL")
        or config.attributes.get("sqlalchemy.url")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError("set TROOP_DATABASE_URL (or sqlalchemy.url) to migrate")
    return url


async def _run_async() -> None:
    engine = create_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure_and_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
    else:
        if config.config_file_name is not None:
            from logging.config import fileConfig

            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""`troop admin audit-ledger` (audit_ledger) and `alembic upgrade head` by hand."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from troop_coordinator.admin import audit_ledger
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.ledger import Ledger
from troop_coordinator.settings import CoordinatorSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_audit_passes_then_catches_a_tampered_balance(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        ledger = Ledger(session_factory(engine), starter_millicredits=1000)
        await ledger.ensure_user_with_grant("ab" * 32, datetime.now(UTC))
        settings = CoordinatorSettings(database_url=database_url)

        out = io.StringIO()
        assert await audit_ledger(settings, out=out) == 0
        assert "ledger OK" in out.getvalue() and "conserved" in out.getvalue()

        async with engine.begin() as connection:
            await connection.execute(text("UPDATE users SET balance_millicredits = 5000"))
        out = io.StringIO()
        assert await audit_ledger(settings, out=out) == 1
        assert "NOT CONSERVED" in out.getvalue()
        assert "differ from their entries" in out.getvalue()
    finally:
        await engine.dispose()


async def test_alembic_upgrade_head_by_hand_from_the_repo_root(postgres_url: str) -> None:
    alembic = Path(sys.executable).parent / "alembic"
    env = {**os.environ, "TROOP_DATABASE_URL": postgres_url}

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(alembic), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    await asyncio.to_thread(run, "upgrade", "head")
    head = (await asyncio.to_thread(run, "heads")).split()[0]
    assert head in await asyncio.to_thread(run, "current")
    await asyncio.to_thread(run, "downgrade", "0001_initial")
    await asyncio.to_thread(run, "upgrade", "head")


def test_redis_settings_come_from_the_environment() -> None:
    settings = CoordinatorSettings.from_env(
        {"TROOP_REDIS_URL": "redis://r:6379/2", "TROOP_REDIS_PREFIX": "blue:"}
    )
    assert (settings.redis_url, settings.redis_prefix) == ("redis://r:6379/2", "blue:")
    assert CoordinatorSettings.from_env({}).redis_url == ""

"""scripts/backup and scripts/restore: a backup of a live ledger restores whole.

A coordinator process serves on PostgreSQL with jobs charged, refunded, disputed and one
still open, and a user keeps authorizing and settling while the backup runs. The dump is
restored into an empty database; the audit passes on the copy, every quiet account has
the same balance and reservation there, the append-only guard still refuses an UPDATE,
and a second coordinator on the copy authorizes and settles jobs (the stored functions
came back). Retention keeps the newest N; a failed backup deletes nothing.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import free_port, require
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.admin import audit_ledger
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state

BACKUP = str(state.REPO_ROOT / "scripts" / "backup")
RESTORE = str(state.REPO_ROOT / "scripts" / "restore")


@pytest.fixture(autouse=True)
def client_tools() -> None:
    """The scripts drive PostgreSQL's own client tools."""
    missing = [t for t in ("pg_dump", "pg_restore", "psql") if shutil.which(t) is None]
    require("PostgreSQL client tools", not missing, f"{', '.join(missing)} not on PATH")


@dataclass
class Done:
    code: int
    out: str
    err: str


async def run(*args: str, **env: str) -> Done:
    """A script as an operator runs it, with this interpreter's tools first on PATH."""
    full = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        *args, env=full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def fetch(url: str, query: str) -> list[tuple]:
    connection = await asyncpg.connect(libpq(url))
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


async def settle(
    user: CoordinatorClient, node: state.TestNode, job_id: str, *, tokens: int, failed: bool
) -> pb.SubmitReceiptResponse:
    """The client countersigns `tokens`, then the node's receipt (5 tokens) arrives."""
    await user.report_usage(job_id, completion_tokens=tokens, stream_ms=10)
    outcome = pb.JOB_OUTCOME_FAILED if failed else pb.JOB_OUTCOME_COMPLETED
    return await user.submit_receipt(node.receipt(job_id, user.identity, outcome=outcome))


async def test_a_backup_of_a_live_ledger_restores_into_an_empty_database(
    postgres_url: str,
    empty_postgres_url: str,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    env = {
        "TROOP_DATABASE_URL": postgres_url,
        "TROOP_DATA_DIR": str(state.make_data_dir(tmp_path / "original", ticket_key_pem)),
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # the node is an identity, no worker behind it
        "TROOP_NODE_TTL_SECONDS": "3600",
        "TROOP_RATE_LIMITS": "",  # "busy" authorizes as often as it can
    }
    original = await state.start_coordinator(processes, env, tmp_path / "original.log")
    node = state.new_node()
    names = ("charged", "refunded", "disputed", "holding", "busy")
    users = {name: CoordinatorClient(original.address, Identity.generate()) for name in names}
    owner = CoordinatorClient(original.address, node.owner)
    node_client = CoordinatorClient(original.address, node.identity)
    clients = [*users.values(), owner, node_client]
    try:
        await node.heartbeat(node_client)
        jobs = {name: (await users[name].authorize(state.MODEL)).job_id for name in names}
        charged = await settle(users["charged"], node, jobs["charged"], tokens=5, failed=False)
        assert charged.kind == pb.SETTLEMENT_KIND_CHARGED and charged.charged_millicredits > 0
        refunded = await settle(users["refunded"], node, jobs["refunded"], tokens=5, failed=True)
        assert refunded.kind == pb.SETTLEMENT_KIND_REFUNDED
        await settle(users["disputed"], node, jobs["disputed"], tokens=1, failed=False)
        assert await fetch(postgres_url, "SELECT job_id FROM disputes") == [(jobs["disputed"],)]

        # "busy" keeps money moving (refunded in full: the quiet accounts stay still)
        # until the backup has finished.
        cycles = 0
        stop = asyncio.Event()

        async def keep_busy() -> None:
            nonlocal cycles
            job_id = jobs["busy"]
            while True:
                await settle(users["busy"], node, job_id, tokens=5, failed=True)
                cycles += 1
                if stop.is_set():
                    return
                job_id = (await users["busy"].authorize(state.MODEL)).job_id

        busy = asyncio.create_task(keep_busy())
        await eventually(lambda: cycles > 0 or busy.done(), timeout_s=30)
        backups = tmp_path / "backups"
        backup = await run(BACKUP, "--dir", str(backups), TROOP_DATABASE_URL=postgres_url)
        stop.set()
        await busy
        assert backup.code == 0, backup.err
        [dump] = backups.iterdir()
        assert dump.name.startswith("troop-") and dump.name.endswith(".dump")
        assert backup.out.strip() == str(dump)

        before = {name: await client.get_balance() for name, client in users.items()}
        before["owner"] = await owner.get_balance()
    finally:
        for client in clients:
            await client.close()
    assert before["holding"].reserved_millicredits > 0
    assert before["owner"].balance_millicredits > 0

    restore = await run(RESTORE, str(dump), empty_postgres_url)
    assert restore.code == 0, restore.err
    assert "ledger OK" in restore.out and "(head)" in restore.err
    report = io.StringIO()
    assert await audit_ledger(CoordinatorSettings(database_url=empty_postgres_url), report) == 0
    assert "ledger OK" in report.getvalue()

    # The copy is refused as a target now that it holds the ledger, and stays as it was.
    entries = "SELECT * FROM ledger_entries ORDER BY id"
    restored_entries = await fetch(empty_postgres_url, entries)
    again = await run(RESTORE, str(dump), empty_postgres_url)
    assert again.code != 0 and "not empty" in again.err and "--force" in again.err
    assert await fetch(empty_postgres_url, entries) == restored_entries

    # Schema objects came back: the same functions and triggers, the same revision.
    for query in (
        "SELECT proname FROM pg_proc WHERE proname LIKE 'troop%' ORDER BY 1",
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
        "SELECT version_num FROM alembic_version",
    ):
        assert await fetch(empty_postgres_url, query) == await fetch(postgres_url, query), query
    copy = await asyncpg.connect(libpq(empty_postgres_url))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await copy.execute("UPDATE ledger_entries SET amount_millicredits = 0")
    finally:
        await copy.close()

    # A coordinator on the copy: every quiet account as it was, and jobs still settle.
    copy_env = {
        **env,
        "TROOP_DATABASE_URL": empty_postgres_url,
        "TROOP_DATA_DIR": str(state.make_data_dir(tmp_path / "copy", ticket_key_pem)),
    }
    restored = await state.start_coordinator(processes, copy_env, tmp_path / "copy.log")
    users = {n: CoordinatorClient(restored.address, c.identity) for n, c in users.items()}
    owner = CoordinatorClient(restored.address, node.owner)
    node_client = CoordinatorClient(restored.address, node.identity)
    clients = [*users.values(), owner, node_client]
    try:
        for name in ("charged", "refunded", "disputed", "holding", "owner"):
            after = await (owner if name == "owner" else users[name]).get_balance()
            assert (after.balance_millicredits, after.reserved_millicredits) == (
                before[name].balance_millicredits,
                before[name].reserved_millicredits,
            ), name

        await node.heartbeat(node_client)
        held = await settle(users["holding"], node, jobs["holding"], tokens=5, failed=False)
        assert held.kind == pb.SETTLEMENT_KIND_CHARGED and not held.already_settled
        job = await users["charged"].authorize(state.MODEL)
        fresh = await settle(users["charged"], node, job.job_id, tokens=5, failed=False)
        assert fresh.kind == pb.SETTLEMENT_KIND_CHARGED
        balance = await users["charged"].get_balance()
        assert balance.balance_millicredits == (
            before["charged"].balance_millicredits - fresh.charged_millicredits
        )
        assert balance.reserved_millicredits == 0
        earned = (await owner.get_balance()).balance_millicredits
        assert earned > before["owner"].balance_millicredits
    finally:
        for client in clients:
            await client.close()
    assert await audit_ledger(CoordinatorSettings(database_url=empty_postgres_url), report) == 0


async def migrated(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def test_retention_keeps_the_newest_backups_and_nothing_else_is_touched(
    postgres_url: str, tmp_path: Path
) -> None:
    await migrated(postgres_url)
    backups = tmp_path / "backups"
    backups.mkdir()
    older = [f"troop-2026010{day}T030000.000Z.dump" for day in (1, 2, 3)]
    for name in [*older, "notes.txt"]:
        (backups / name).write_text("an older backup")

    done = await run(
        BACKUP,
        TROOP_DATABASE_URL=postgres_url,
        TROOP_BACKUP_DIR=str(backups),
        TROOP_BACKUP_KEEP="2",
    )

    assert done.code == 0, done.err
    new = Path(done.out.strip())
    assert sorted(p.name for p in backups.iterdir()) == ["notes.txt", older[2], new.name]
    listing = await run("pg_restore", "--list", str(new))
    assert listing.code == 0 and "TABLE public ledger_entries" in listing.out


async def test_a_failed_backup_exits_non_zero_and_deletes_nothing(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    kept = [f"troop-2026010{day}T030000.000Z.dump" for day in (1, 2)]
    for name in kept:
        (backups / name).write_text("an older backup")
    refused = f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{free_port()}/troop"

    done = await run(BACKUP, "--dir", str(backups), "--keep", "1", refused)

    assert done.code != 0
    assert "pg_dump failed" in done.err and "none deleted" in done.err
    assert "hunter2" not in done.err + done.out
    assert sorted(p.name for p in backups.iterdir()) == kept  # no partial file either

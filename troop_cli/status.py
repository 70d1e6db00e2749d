"""`troop status`: read the network and your account from the coordinator, draw it.

    troop status            # full screen on a terminal, every --interval s, until Ctrl-C
    troop status --once     # one frame, plain text (scripts, tests)

Your account (balance, reserved credits, your last jobs) is read every `--interval`
seconds. The network (live nodes, models) is read every `--network-interval` seconds: the
coordinator's default limit on discovery is 100 calls an hour per address (ListNodes and
ListModels together, TROOP_RATE_LIMITS), which one view at 2 s would spend in two minutes;
a refusal is waited out as its `retry_after_seconds` says, the last nodes still shown.
Rendering is troop_cli.status_view's, pure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from troop_cli.status_view import Snapshot, render
from troop_client.results import Job, ModelOffer, Node
from troop_client.sdk import TroopClient
from troop_common.config import ConfigError
from troop_common.errors import RateLimited, TroopError

# An alternate screen, the cursor hidden; each frame from the top-left of a cleared screen.
ENTER, LEAVE, FRAME = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l", "\x1b[H\x1b[2J"
HISTORY_PAGES = 5  # at most 500 ledger entries looked through for your last jobs
MAX_JOBS = 50


async def recent_jobs(troop: TroopClient, count: int) -> tuple[Job, ...]:
    """Your last `count` jobs, newest first: their ids from your ledger entries."""
    ids: list[str] = []
    token = ""
    for _ in range(HISTORY_PAGES):
        page = await troop.history(page_size=100, page_token=token)
        for entry in page.items:
            if entry.job_id and entry.job_id not in ids:
                ids.append(entry.job_id)
        token = page.next_page_token
        if len(ids) >= count or not token:
            break
    return tuple(await asyncio.gather(*(troop.job(job_id) for job_id in ids[:count])))


class StatusReader:
    """Keeps the latest snapshot: `refresh()` reads the account each time, the network
    when `network_interval_s` has passed (or a rate limit's wait has)."""

    def __init__(
        self, troop: TroopClient, coordinator: str, *, jobs: int, network_interval_s: float
    ) -> None:
        self.troop = troop
        self.jobs = jobs
        self.network_interval_s = network_interval_s
        self.snapshot = Snapshot(coordinator, datetime.now(UTC))
        self._network_due = 0.0  # time.monotonic() when the network is read next
        self._limited = ""  # while a rate limit's wait lasts: what it said

    async def _network(self) -> tuple[tuple[Node, ...], tuple[ModelOffer, ...]] | None:
        """Nodes and models when due; None when not, or refused by a rate limit."""
        if time.monotonic() < self._network_due:
            return None
        try:
            nodes, models = await asyncio.gather(self.troop.nodes(), self.troop.models())
        except RateLimited as exc:
            self._network_due = time.monotonic() + exc.retry_after_seconds
            self._limited = (
                f"rate-limited by the coordinator: nodes and models read again in "
                f"{exc.retry_after_seconds:.0f} s (TROOP_RATE_LIMITS)"
            )
            return None
        self._network_due = time.monotonic() + self.network_interval_s
        self._limited = ""
        return tuple(nodes), tuple(models)

    async def refresh(self) -> Snapshot:
        """Read what is due; raises TroopError (the snapshot keeps what it had)."""
        network, balance, jobs = await asyncio.gather(
            self._network(), self.troop.balance(), recent_jobs(self.troop, self.jobs)
        )
        before = self.snapshot
        nodes, models = network if network is not None else (before.nodes, before.models)
        self.snapshot = dataclasses.replace(
            before,
            taken_at=datetime.now(UTC),
            nodes=nodes,
            models=models,
            balance=balance,
            jobs=jobs,
            error=self._limited,
        )
        return self.snapshot

    async def refresh_or_note(self) -> Snapshot:
        """`refresh()`, or the last snapshot with what went wrong (the live view goes on)."""
        try:
            return await self.refresh()
        except TroopError as exc:
            self.snapshot = dataclasses.replace(self.snapshot, error=exc.message)
            return self.snapshot


def check_options(interval_s: float, network_interval_s: float, jobs: int) -> None:
    if not interval_s > 0:
        raise ConfigError("--interval must be a number of seconds above 0")
    if not network_interval_s > 0:
        raise ConfigError("--network-interval must be a number of seconds above 0")
    if not 0 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be between 0 and {MAX_JOBS}")


async def run_status(
    troop: TroopClient,
    coordinator: str,
    *,
    once: bool,
    interval_s: float,
    network_interval_s: float,
    jobs: int,
    out: TextIO = sys.stdout,
) -> int:
    check_options(interval_s, network_interval_s, jobs)
    reader = StatusReader(troop, coordinator, jobs=jobs, network_interval_s=network_interval_s)
    terminal = out.isatty()
    if once:  # errors are the command's: exit 1 with the message
        snapshot = await reader.refresh()
        out.write(render(snapshot, now=snapshot.taken_at, width=_width(terminal)) + "\n")
        return 0
    footer = f"every {interval_s:g} s (network every {network_interval_s:g} s); Ctrl-C leaves"
    if terminal:
        out.write(ENTER)
    try:
        while True:
            snapshot = await reader.refresh_or_note()
            frame = render(snapshot, now=datetime.now(UTC), width=_width(terminal), footer=footer)
            # A terminal redraws in place; a pipe gets one frame after another.
            out.write(f"{FRAME}{frame}" if terminal else f"{frame}\n\n")
            out.flush()
            await asyncio.sleep(interval_s)
    finally:
        if terminal:
            out.write(LEAVE)
            out.flush()


def _width(terminal: bool) -> int | None:
    return shutil.get_terminal_size().columns if terminal else None


__all__ = ["StatusReader", "check_options", "recent_jobs", "run_status"]

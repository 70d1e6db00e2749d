"""How a long-running Troop process waits for its end, and stops its child processes.

    async with until_signalled() as stopping, ClientSidecar(settings) as sidecar:
        ending = await stopping.wait(sidecar.wait())  # SIGTERM/SIGINT, or Envoy died
    return ending.exit_code                           # 0 when signalled, 1 when it died

`until_signalled()` installs SIGTERM and SIGINT handlers for as long as the block runs
(where the loop cannot, off the main thread, it installs none and `request()` is the only
way to stop). `wait(*lifelines)` returns when a signal arrives or when any lifeline (an
awaitable the process cannot live without: Envoy, a child process) ends, whichever is
first. The stop steps themselves are the `async with` exits, run in reverse order of
entry, each with its own grace (see ADR 43). `stop_processes` is the step for children:
SIGTERM to each, newest first, then SIGKILL to any still running after the grace (`troop up`
stops its coordinator and worker with it, `EnvoySidecar` its Envoy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass

log = logging.getLogger("troop.shutdown")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Ending:
    """Why the wait ended: a signal (a normal stop), or a lifeline that ended first."""

    signal: signal.Signals | None = None
    died: BaseException | None = None  # what the lifeline raised, None if it returned

    @property
    def signalled(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 0 if self.signalled else 1


class Stopping:
    """Set by SIGTERM/SIGINT (or `request()`); `wait` for it or for a lifeline to end."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._signal: signal.Signals | None = None

    def request(self, signum: signal.Signals = signal.SIGTERM) -> None:
        if self._signal is None:
            self._signal = signum
            log.info("%s received: stopping", signum.name)
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self, *lifelines: Awaitable[object]) -> Ending:
        """Until a stop is requested or the first lifeline ends (the others are cancelled)."""
        stopper = asyncio.ensure_future(self._event.wait())
        watched = [asyncio.ensure_future(lifeline) for lifeline in lifelines]
        try:
            done, _ = await asyncio.wait([stopper, *watched], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, *watched):
                task.cancel()
            await asyncio.gather(stopper, *watched, return_exceptions=True)
        if stopper in done:
            return Ending(signal=self._signal)
        ended = next(task for task in watched if task in done)
        return Ending(died=None if ended.cancelled() else ended.exception())


@contextlib.asynccontextmanager
async def until_signalled() -> AsyncIterator[Stopping]:
    """SIGTERM and SIGINT request a stop while the block runs; the handlers go with it."""
    stopping = Stopping()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in STOP_SIGNALS:
        # Off the main thread (or on a loop without signals) there is nothing to install.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stopping.request, signum)
            installed.append(signum)
    try:
        yield stopping
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def stop_processes(processes: Iterable[asyncio.subprocess.Process], grace_s: float) -> None:
    """SIGTERM each process still running (newest first), wait up to `grace_s` for each,
    SIGKILL those that outlast it."""
    newest_first = list(processes)[::-1]
    for process in newest_first:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    for process in newest_first:
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            log.warning("process %d outlasted %.0f s after SIGTERM: killed", process.pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


__all__ = ["STOP_SIGNALS", "Ending", "Stopping", "stop_processes", "until_signalled"]

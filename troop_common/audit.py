"""The audit log: one JSON line per audited call, written off the request path.

`AuditLog.record` never blocks and never raises: it puts the event, as it
is, on a queue; a background thread stamps, scrubs and serialises it and
writes it to a size-rotated file (`<dir>/<component>-audit.jsonl`), so the
request path pays for one queue put, not for JSON, regular expressions and
the logging machinery (ADR 36). Security events (bad signatures, replays,
forged receipts, refused identities) also go to an optional async sink — the
coordinator's tamper-evident audit table, limited per source address first
(troop_common.audit_throttle: a flood of bad tokens adds a bounded number of
rows and one "suppressed K events" row per address and window). Every string
is scrubbed of anything shaped like a secret (JWTs, PEM keys) before it is
written. `trusted_proxies` names the proxies whose `x-forwarded-for` gives the
address recorded as `peer_ip` (troop_common.ratelimit.TrustedProxies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import queue
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from troop_common.audit_throttle import SecurityEventLimits, SecurityEventThrottle
from troop_common.private_files import PRIVATE_DIR_MODE, open_private
from troop_common.ratelimit import TrustedProxies

log = logging.getLogger("troop.audit")

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)
_BEARER = re.compile(r"(?i)bearer\s+\S+")

SecuritySink = Callable[[dict[str, Any]], Awaitable[object]]


def scrub(text: str) -> str:
    """`text` with every secret-shaped substring replaced."""
    text = _PEM.sub("[redacted key]", text)
    text = _JWT.sub("[redacted token]", text)
    return _BEARER.sub("Bearer [redacted]", text)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


def _json_line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, default=str) + "\n"


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Each file (the first and every one after a rollover) created 0600, any umask."""

    def _open(self):  # the supertype's return type varies between Python versions
        fd = open_private(Path(self.baseFilename))
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def write_lines(self, lines: list[str]) -> None:
        """Append whole lines with one flush, rolling over wherever the next line would
        take the file past maxBytes (as `handle` does, one line at a time)."""
        self.acquire()
        try:
            if self.stream is None:
                self.stream = self._open()
            size = self.stream.tell()
            pending: list[str] = []
            for line in lines:
                length = len(line.encode())
                if self.maxBytes > 0 and size > 0 and size + length >= self.maxBytes:
                    self.stream.write("".join(pending))
                    self.doRollover()
                    size, pending = 0, []
                pending.append(line)
                size += length
            self.stream.write("".join(pending))
            self.stream.flush()
        finally:
            self.release()


# Lines written (and flushed) together at most, when that many have piled up.
WRITE_BATCH = 256


class AuditLog:
    """`record(...)` from any coroutine; `close()` flushes the file at shutdown."""

    def __init__(
        self,
        directory: Path | None,
        component: str,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        security_sink: SecuritySink | None = None,
        security_limits: SecurityEventLimits | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.component = component
        self.path = directory / f"{component}-audit.jsonl" if directory else None
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self._security_sink = security_sink
        self.throttle = SecurityEventThrottle(security_limits or SecurityEventLimits())
        self._flush_timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._events: queue.SimpleQueue[tuple[float, bool, dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._writer: threading.Thread | None = None
        self._handler: logging.Handler | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
                handler = _PrivateRotatingFileHandler(
                    self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
                )
            except OSError:
                # An unwritable audit directory must not stop the service: say so loudly.
                log.exception("cannot write the audit log at %s; file auditing is off", self.path)
                self.path = None
                return
            self._handler = handler
            self._writer = threading.Thread(
                target=self._write_lines, name=f"audit-{component}", daemon=True
            )
            self._writer.start()

    def _line(self, at: float, security: bool, event: dict[str, Any]) -> dict[str, Any]:
        return _scrubbed(
            {
                "ts": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
                "component": self.component,
                "security": security,
                **event,
            }
        )

    def _write_lines(self) -> None:
        """The writer thread: everything queued, in order, until `None`; what has piled up
        since the last write goes out as one write and one flush (not one per line)."""
        assert self._handler is not None
        while (item := self._events.get()) is not None:
            batch = [item]
            while len(batch) < WRITE_BATCH:
                try:
                    more = self._events.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._write_batch(batch)
                    return
                batch.append(more)
            self._write_batch(batch)

    def _write_batch(self, batch: list[tuple[float, bool, dict[str, Any]]]) -> None:
        handler = self._handler
        assert isinstance(handler, _PrivateRotatingFileHandler)
        try:
            handler.write_lines(
                [
                    _json_line(event if "ts" in event else self._line(at, security, event))
                    for at, security, event in batch
                ]
            )
        except Exception:
            log.exception("could not write %d audit events", len(batch))

    def record(self, event: dict[str, Any], *, security: bool = False) -> None:
        """Write one event (and, if security-relevant, send it to the sink). Never raises."""
        try:
            at = time.time()
            if self._writer is not None:
                self._events.put((at, security, event))  # formatted in the writer thread
            if security and self._security_sink is not None:
                self._store(self.throttle.admit(self._line(at, security, event)))
                if self.throttle.suppressing and self._flush_timer is None:
                    # The window's summary is stored when it ends, flood over or not.
                    self._flush_timer = asyncio.get_running_loop().call_later(
                        self.throttle.window_left_s(), self._flush_suppressed
                    )
        except Exception:  # auditing must never fail a request
            log.exception("could not write an audit event")

    def _store(self, events: list[dict[str, Any]]) -> None:
        """Send events to the security sink (summaries also to the file)."""
        assert self._security_sink is not None
        for event in events:
            if "ts" not in event:
                event = {
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "component": self.component,
                    "security": True,
                    **event,
                }
                if self._writer is not None:
                    self._events.put((0.0, True, event))
            task = asyncio.get_running_loop().create_task(self._sink(self._security_sink, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _flush_suppressed(self) -> None:
        self._flush_timer = None
        try:
            if self._security_sink is not None:
                self._store(self.throttle.flush())
        except Exception:
            log.exception("could not store the suppressed-events summary")

    async def _sink(self, sink: SecuritySink, event: dict[str, Any]) -> None:
        try:
            await sink(event)
        except Exception:  # the file line is already written
            log.exception("could not store a security event")

    async def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self.throttle.suppressing:
            self._flush_suppressed()
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._pending, timeout=5)
        if self._writer is not None:
            self._events.put(None)  # after everything queued before it
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._handler is not None:
            self._handler.close()
            self._handler = None

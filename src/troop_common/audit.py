"""The audit log: one JSON line per audited call, written off the request path.

`AuditLog.record` never blocks and never raises: it hands the event to a
queue that a background thread writes to a size-rotated file
(`<dir>/<component>-audit.jsonl`). Security events (bad signatures, replays,
forged receipts, refused identities) also go to an optional async sink — the
coordinator's tamper-evident audit table. Every string is scrubbed of
anything shaped like a secret (JWTs, PEM keys) before it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import queue
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, separators=(",", ":"), sort_keys=True, default=str)


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
    ) -> None:
        self.component = component
        self.path = directory / f"{component}-audit.jsonl" if directory else None
        self._security_sink = security_sink
        self._pending: set[asyncio.Task[None]] = set()
        self._logger = logging.getLogger(f"troop.audit.{component}.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._listener: logging.handlers.QueueListener | None = None
        self._handler: logging.Handler | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(
                    self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
                )
            except OSError:
                # An unwritable audit directory must not stop the service: say so loudly.
                log.exception("cannot write the audit log at %s; file auditing is off", self.path)
                self.path = None
                return
            self._handler = handler
            events: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
            # The queue handler turns the event into its JSON line on the caller's
            # side (QueueHandler.prepare formats); the file handler writes it as is.
            enqueue = logging.handlers.QueueHandler(events)
            enqueue.setFormatter(_JsonLines())
            self._logger.addHandler(enqueue)
            self._listener = logging.handlers.QueueListener(events, handler)
            self._listener.start()

    def record(self, event: dict[str, Any], *, security: bool = False) -> None:
        """Write one event (and, if security-relevant, send it to the sink). Never raises."""
        try:
            line = _scrubbed(
                {
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "component": self.component,
                    "security": security,
                    **event,
                }
            )
            if self._listener is not None:
                self._logger.info(line)
            if security and self._security_sink is not None:
                task = asyncio.get_running_loop().create_task(self._sink(self._security_sink, line))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        except Exception:  # auditing must never fail a request
            log.exception("could not write an audit event")

    async def _sink(self, sink: SecuritySink, event: dict[str, Any]) -> None:
        try:
            await sink(event)
        except Exception:  # the file line is already written
            log.exception("could not store a security event")

    async def close(self) -> None:
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._pending, timeout=5)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._handler is not None:
            self._handler.close()
            self._handler = None

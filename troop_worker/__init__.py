"""The Troop worker: serves `troop.v1.InferenceService` for tickets the coordinator signs.

Public surface: `WorkerSettings`, `Worker` (async context manager), `serve`, `main`.
"""

from __future__ import annotations

from troop_worker.app import Worker, main, serve
from troop_worker.settings import WorkerSettings

__all__ = ["Worker", "WorkerSettings", "main", "serve"]

"""How many jobs a worker runs at once, overall and per user.

Admission is all-or-nothing and immediate: a job over a limit is refused
with RateLimited (RESOURCE_EXHAUSTED + RetryInfo) rather than queued without
bound; the client retries or goes to another node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from troop_common.errors import RateLimited

RETRY_AFTER_S = 1.0


class JobLimiter:
    """Counts running jobs; `with limiter.admit(user):` holds a slot for one job."""

    def __init__(self, max_jobs: int, max_jobs_per_user: int) -> None:
        self.max_jobs = max_jobs
        self.max_jobs_per_user = max_jobs_per_user
        self._by_user: Counter[str] = Counter()
        self.active = 0

    @contextmanager
    def admit(self, user: str) -> Iterator[None]:
        # No await between check and increment: atomic on the event loop.
        if self.active >= self.max_jobs:
            raise RateLimited(
                f"this node is running its maximum of {self.max_jobs} jobs", RETRY_AFTER_S
            )
        if self._by_user[user] >= self.max_jobs_per_user:
            raise RateLimited(
                f"this node already runs {self.max_jobs_per_user} of your jobs", RETRY_AFTER_S
            )
        self.active += 1
        self._by_user[user] += 1
        try:
            yield
        finally:
            self.active -= 1
            self._by_user[user] -= 1
            if self._by_user[user] <= 0:
                del self._by_user[user]

"""The verifier's user identities: ordinary users the checks run as, renewed once a node
may know one.

Each identity is a key file under `verifier-users/` that joins and pays like any user.
A node that failed a check saw the key on the failed job, and any node sees a key that
keeps coming back, so `Verifier` asks for a fresh one then (`renew`): the old key moves
to `verifier-users/retired/` (its last jobs may still be settling) and a new key joins
in its place. The old client stays open `RETIRED_GRACE_S`, so a check still running on
it finishes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from troop_client.reports import reports_outbox
from troop_client.sdk import TroopClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_verifier.settings import VerifierSettings

log = logging.getLogger("troop.verifier")

# A retired identity's client stays open this long: a check running on it finishes.
RETIRED_GRACE_S = 600.0


class IdentityPool:
    """`await pool.open()` → the clients; `await pool.renew(old)`; `await pool.close()`."""

    def __init__(self, settings: VerifierSettings) -> None:
        self.settings = settings
        self._live: list[TroopClient] = []  # every client not closed yet
        self._retired: list[tuple[float, TroopClient]] = []
        self._paths: dict[int, Path] = {}

    async def open(self) -> list[TroopClient]:
        """A joined client for each of the configured identities."""
        return [
            await self._joined(self.settings.identity_path(n))
            for n in range(self.settings.identities)
        ]

    async def renew(self, old: TroopClient) -> TroopClient:
        """A fresh key in `old`'s place; the old key is kept aside."""
        now = time.monotonic()
        for retired in [r for r in self._retired if now - r[0] > RETIRED_GRACE_S]:
            self._retired.remove(retired)
            self._live.remove(retired[1])
            await retired[1].close()
        self._retired.append((now, old))
        path = self._paths.pop(id(old))
        kept = self.settings.retired_path(old.public_key)
        kept.parent.mkdir(parents=True, exist_ok=True)
        path.rename(kept)
        return await self._joined(path)

    async def close(self) -> None:
        for client in self._live:
            await client.close()
        self._live.clear()

    async def _joined(self, path: Path) -> TroopClient:
        path.parent.mkdir(parents=True, exist_ok=True)
        identity = Identity.load_or_create(path)
        client = TroopClient(
            self.settings.client.coordinator, identity, self.settings.client,
            outbox=reports_outbox(self.settings.client, identity),
        )  # fmt: skip
        self._live.append(await client.__aenter__())
        try:
            await client.join()
        except TroopError as exc:
            log.warning("identity %s could not join: %s", path.name, exc.message)
        self._paths[id(client)] = path
        return client

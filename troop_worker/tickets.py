"""Ticket checking on the worker: the coordinator's keys, cached, and single use.

`KeyCache` holds the coordinator's ticket-verification keys (from GetKeySet),
fetched at start and refreshed when a ticket names a key it does not know —
such on-demand refreshes at most once per `min_refresh_s`, so garbage tickets
cannot make the worker hammer the coordinator (the start-up fetch does not
count: a key rotated just after start is still picked up). The whole set is
also re-fetched when it is older than `max_age_s`, so a key the coordinator
retired (and dropped from its set after the grace period) stops verifying
here within `max_age_s` even if no unknown kid ever shows up.
`TicketVerifier.verify` checks a token (pure
`troop_common.tickets.verify_ticket`); `consume` makes it single use,
remembering its job id until the ticket expires — in memory by default; the
running worker hands it `troop_worker.used_tickets.UsedTickets`, which also
keeps the ids on disk, so a restart does not let a used ticket run again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from troop_common import jws
from troop_common.errors import TicketInvalid, TicketReused, TroopError
from troop_common.proto import coordinator_pb2
from troop_common.replay import MemoryReplaySet, ReplaySet
from troop_common.tickets import Ticket, public_key_from_jwk, ticket_kid, verify_ticket

log = logging.getLogger("troop.worker.tickets")

FetchKeySet = Callable[[], Awaitable[coordinator_pb2.GetKeySetResponse]]


class KeyCache:
    """The coordinator's accepted ticket keys by `kid`."""

    def __init__(
        self,
        fetch: FetchKeySet,
        *,
        min_refresh_s: float = 10.0,
        max_age_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._fetched_at: float | None = None
        self._clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._on_demand_at: float | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0

    @property
    def keys(self) -> Mapping[str, rsa.RSAPublicKey]:
        return self._keys

    async def refresh(self) -> None:
        """Replace the keys with the coordinator's current set (errors propagate)."""
        response = await self._fetch()
        keys: dict[str, rsa.RSAPublicKey] = {}
        for jwk in response.keys:
            if jwk.kty != "RSA" or not jwk.kid:
                continue
            try:
                keys[jwk.kid] = public_key_from_jwk({"n": jwk.n, "e": jwk.e})
            except ValueError:
                log.warning("ignoring a malformed key %r in the coordinator's key set", jwk.kid)
        self._keys = keys
        self._fetched_at = self._clock()
        self.refreshes += 1
        log.info("ticket keys: %s", ", ".join(sorted(keys)) or "none")

    async def keys_for(self, kid: str | None) -> Mapping[str, rsa.RSAPublicKey]:
        """The keys, refreshed first if the set is older than `max_age_s`, or if `kid` is
        unknown and the last on-demand refresh is old enough."""
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age_s:
            await self._refresh_stale()
        if kid is None or kid in self._keys:
            return self._keys
        async with self._lock:
            if kid in self._keys:  # another call refreshed while we waited
                return self._keys
            now = self._clock()
            if self._on_demand_at is None or now - self._on_demand_at >= self._min_refresh_s:
                self._on_demand_at = now
                try:
                    await self.refresh()
                except TroopError as exc:
                    # Keep the old keys: the ticket then fails as signed by an unknown key.
                    log.warning("could not refresh ticket keys: %s", exc)
        return self._keys

    async def _refresh_stale(self) -> None:
        async with self._lock:
            if self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age_s:
                return  # refreshed while we waited
            try:
                await self.refresh()
            except TroopError as exc:
                # An unreachable coordinator must not take the worker down with it: keep
                # the set (its keys are still bounded by the tickets' own expiry) and try
                # again on the next ticket after min_refresh_s.
                self._fetched_at = self._clock() - self._max_age_s + self._min_refresh_s
                log.warning("could not refresh ticket keys: %s", exc)


class TicketVerifier:
    """Verifies tickets for one node and spends each once."""

    def __init__(
        self,
        keys: KeyCache,
        *,
        node_id: str,
        node_key: str | None = None,
        replay: ReplaySet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_cache = keys
        self.node_id = node_id
        self.node_key = node_key
        self._replay = replay if replay is not None else MemoryReplaySet()
        self._clock = clock

    async def verify(self, token: str) -> Ticket:
        """The verified ticket; TicketInvalid if forged, expired, or for another node
        (id or key)."""
        try:
            parsed = jws.parse(token)  # once: the kid picks the key, then the verification
        except jws.JwsError as exc:
            raise TicketInvalid(f"invalid ticket: {exc}") from exc
        keys = await self.key_cache.keys_for(ticket_kid(parsed))
        return verify_ticket(
            parsed, keys, node_id=self.node_id, node_key=self.node_key, now=self._clock()
        )

    async def consume(self, ticket: Ticket) -> None:
        """Spend the ticket; TicketReused if its job already ran here."""
        if not await self._replay.add(f"ticket:{ticket.job_id}", ticket.expires_at + 60):
            raise TicketReused(f"ticket for job {ticket.job_id} was already used")

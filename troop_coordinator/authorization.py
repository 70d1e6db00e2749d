"""Job authorisation: pick a node, price the job, reserve its most, sign its ticket.

One Authorize, in order: a live node serving the model (best first, those the
client excluded skipped), the ticket signed for that node with the job's token
bounds, and the reservation of what the job can cost at most, which on
PostgreSQL checks the join, the cap on open jobs and the credits in one round
trip (docs/adr/0034). The refusals keep their order when no node serves the
model: not joined (or open admission's grant), over the cap, then no node.
Refusals are `troop_common.errors` (the servicer only converts).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from troop_common.errors import NodeUnavailable, RateLimited
from troop_coordinator.admission import Admission
from troop_coordinator.ledger import Ledger, NewJob, NotJoined, TooManyOpenJobs
from troop_coordinator.pricing import DEFAULT_MAX_TOKENS, ModelCatalog, ModelPrice
from troop_coordinator.registry import LiveNode, NodeRegistry
from troop_coordinator.ticket_keys import TicketKeyRing


@dataclass(frozen=True)
class JobRequest:
    """What a user asks to run: a model and the job's bounds (0: the model's own)."""

    user: str
    model: str
    max_tokens: int = 0
    max_prompt_tokens: int = 0
    exclude_node_ids: frozenset[str] = field(default_factory=frozenset)
    # Only this node when set (a pinned Authorize, docs/adr/0053).
    node_id: str = ""


@dataclass(frozen=True)
class Authorization:
    """A job reserved and its ticket signed, for one node."""

    job_id: str
    ticket: str
    node: LiveNode
    expires_at: float  # the ticket's expiry (unix seconds)
    reserved_millicredits: int
    max_tokens: int
    max_prompt_tokens: int
    price: ModelPrice


@dataclass(frozen=True)
class JobLimits:
    """The coordinator's rules for open jobs."""

    max_open_jobs_per_user: int
    # How long after its ticket expires a job's receipt is still accepted.
    settle_grace_s: float


class JobAuthorizer:
    def __init__(
        self,
        *,
        ledger: Ledger,
        registry: NodeRegistry,
        signer: TicketKeyRing,
        catalog: ModelCatalog,
        admission: Admission,
        limits: JobLimits,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.signer = signer
        self.catalog = catalog
        self.admission = admission
        self.limits = limits

    async def authorize(self, request: JobRequest, now: float) -> Authorization:
        price = self.catalog.price(request.model)
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        # A client's prompt bound is an estimate from above (bytes, without a
        # tokenizer): beyond the model's own bound it means that bound.
        max_prompt_tokens = min(
            request.max_prompt_tokens or price.max_prompt_tokens, price.max_prompt_tokens
        )
        created = datetime.fromtimestamp(now, UTC)
        if request.node_id:
            node = await self._pinned(request, now)
        else:
            # Barred nodes, and those that failed a check for the model within its hold,
            # are in no model's list (registry.LiveNode.listed_under).
            node = await self.registry.pick(request.model, now, set(request.exclude_node_ids))
        if node is None:
            raise await self._no_node(request, created, now)
        job_id = uuid.uuid4().hex
        ticket, expires = self.signer.issue(
            job_id=job_id,
            user=request.user,
            node_id=node.node_id,
            node_key=node.node_public_key,
            model=request.model,
            now=now,
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
        )
        # What the job can cost at most: the rest is released at settlement. One call
        # (on PostgreSQL one round trip) checks the join, the cap and the credits.
        reserved = price.charge(max_prompt_tokens, max_tokens)
        job = NewJob(
            job_id=job_id,
            user_public_key=request.user,
            node_id=node.node_id,
            model=request.model,
            reserved_millicredits=reserved,
            created_at=created,
            # A job may still be running when its ticket expires: its receipt is
            # accepted for a grace period before the sweeper returns the credits.
            expires_at=datetime.fromtimestamp(expires + self.limits.settle_grace_s, UTC),
            max_prompt_tokens=max_prompt_tokens,
            max_tokens=max_tokens,
            prompt_price_per_1k=price.prompt_per_1k,
            completion_price_per_1k=price.completion_per_1k,
        )
        if not await self._reserve(job, now):
            # A user's first Authorize under open admission: grant, then reserve.
            await self.admission.grant_on_first_use(request.user, created)
            await self._reserve(job, now, joined=True)
        return Authorization(
            job_id=job_id,
            ticket=ticket,
            node=node,
            expires_at=expires,
            reserved_millicredits=reserved,
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            price=price,
        )

    async def _pinned(self, request: JobRequest, now: float) -> LiveNode | None:
        """The node a client pinned, if it is live, serves the model, is not excluded and
        is not barred; a node held by a failed check may be pinned (its pay is held)."""
        node = await self.registry.node(request.node_id, now)
        if (
            node is None
            or request.model not in node.models
            or node.checks.barred
            or node.node_id in request.exclude_node_ids
        ):
            return None
        return node

    async def _no_node(self, request: JobRequest, created: datetime, now: float) -> Exception:
        """The refusal when no node serves the model, after the user's own refusals (off
        the hot path, so their order holds): not joined, over the cap, then no node."""
        await self.admission.admit(request.user, created)
        count, first_expiry = await self.ledger.open_jobs(request.user)
        if count >= self.limits.max_open_jobs_per_user:
            return self._too_many_open_jobs(count, first_expiry, now)
        if request.node_id:
            return NodeUnavailable(
                f"node {request.node_id} is not live for model {request.model}",
                model=request.model,
            )
        others = " other than those excluded" if request.exclude_node_ids else ""
        return NodeUnavailable(
            f"no live node{others} serves model {request.model}", model=request.model
        )

    async def _reserve(self, job: NewJob, now: float, *, joined: bool = False) -> bool:
        """The ledger's reservation under this coordinator's cap on open jobs; False if the
        user has not joined (unless `joined`: then that propagates), nothing written."""
        try:
            await self.ledger.reserve(job, max_open_jobs=self.limits.max_open_jobs_per_user)
        except TooManyOpenJobs as exc:
            raise self._too_many_open_jobs(exc.open_jobs, exc.first_expiry, now) from None
        except NotJoined:
            if joined:
                raise
            return False
        return True

    def _too_many_open_jobs(
        self, count: int, first_expiry: datetime | None, now: float
    ) -> RateLimited:
        """RESOURCE_EXHAUSTED once the user holds the most open reservations allowed."""
        cap = self.limits.max_open_jobs_per_user
        wait_s = max(1.0, first_expiry.timestamp() - now) if first_expiry else 1.0
        return RateLimited(
            f"too many open jobs: {count} of at most {cap} per user; retry when one finishes "
            f"(settled or expired, in {wait_s:.0f} s at the latest); the coordinator's "
            "operator can raise TROOP_MAX_OPEN_JOBS_PER_USER",
            wait_s,
        )

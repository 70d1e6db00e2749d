"""A node's heartbeat: its binding and facts kept (troop_coordinator.nodes), and its
listing in the registry once its endpoint is proven to answer with its key (ADR 33).

With endpoint proofs on, a node whose advertised endpoint is not the one proven is
not listed until a background dial (troop_coordinator.reachability) finds its key
there; the beat is answered at once either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from troop_common.errors import PermissionDenied
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.reachability import EndpointProofs
from troop_coordinator.registry import LiveNode, NodeRegistry

log = logging.getLogger("troop.coordinator.heartbeats")


@dataclass(frozen=True)
class Beat:
    """A heartbeat's answer: the node's multiplier, and whether it is listed now."""

    multiplier: float
    endpoint_proven: bool


class Heartbeats:
    def __init__(
        self,
        nodes: NodeDirectory,
        registry: NodeRegistry,
        endpoint_proofs: EndpointProofs | None = None,
        *,
        hold_s: float = 259200.0,
    ) -> None:
        self.nodes = nodes
        self.registry = registry
        self.endpoint_proofs = endpoint_proofs
        self.hold_s = hold_s  # TROOP_VERIFICATION_HOLD_SECONDS

    async def beat(self, node: LiveNode, owner: str, invite_code: str = "") -> Beat:
        """Record the beat (binding the node id on first sight, admission permitting:
        PermissionDenied otherwise, and for a barred node key) and list the node if its
        endpoint is proven."""
        standing = await self.nodes.record_heartbeat(
            node, owner, datetime.fromtimestamp(node.last_seen, UTC), invite_code=invite_code
        )
        checks = standing.checks
        if checks.barred:
            raise PermissionDenied(
                "this node key is barred: it failed too many verification checks (docs/adr/0053)"
            )
        # A failed check's penalty fades over its hold (docs/adr/0053).
        reputation = standing.reputation * checks.reputation_factor(node.last_seen, self.hold_s)
        live = replace(node, multiplier=standing.multiplier, reputation=reputation, checks=checks)
        proofs = self.endpoint_proofs
        proven = proofs is None or standing.proves(node.endpoint, node.tls)
        if proofs is None or proven:
            await self.registry.heartbeat(live)
        else:
            # Listed only once its endpoint answered with its key (in the background).
            proofs.check(live, self._endpoint_proven)
        return Beat(multiplier=standing.multiplier, endpoint_proven=proven)

    async def _endpoint_proven(self, node: LiveNode) -> None:
        await self.nodes.set_proven_endpoint(
            node.node_id, node.node_public_key, node.endpoint, node.tls
        )
        await self.registry.heartbeat(node)
        log.info("node %s proved its endpoint %s", node.node_id, node.endpoint)

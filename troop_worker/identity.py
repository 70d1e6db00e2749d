"""Who this worker is: its Ed25519 node key, node id, and the owner credited for its work."""

from __future__ import annotations

from dataclasses import dataclass

from troop_common.config import ConfigError
from troop_common.keys import Identity, is_public_key_hex
from troop_worker.settings import WorkerSettings

NODE_KEY_FILE = "node.key"
OWNER_KEY_FILE = "owner.key"


@dataclass(frozen=True)
class NodeIdentity:
    """The node key signs heartbeats and receipts; the owner's key earns the credits."""

    key: Identity
    node_id: str
    owner_public_key: str

    @property
    def public_key_hex(self) -> str:
        return self.key.public_key_hex


def load_node_identity(settings: WorkerSettings) -> NodeIdentity:
    """Load (creating on first use, mode 0400) the keys under `settings.data_dir`."""
    key = Identity.load_or_create(settings.data_dir / NODE_KEY_FILE)
    node_id = settings.node_id or f"node-{key.public_key_hex[:12]}"
    owner = settings.owner_public_key
    if owner is None:
        owner = Identity.load_or_create(settings.data_dir / OWNER_KEY_FILE).public_key_hex
    elif not is_public_key_hex(owner.lower()):  # the operator's own setting, any case
        raise ConfigError("TROOP_WORKER_OWNER must be a hex Ed25519 public key (64 hex digits)")
    return NodeIdentity(key=key, node_id=node_id, owner_public_key=owner.lower())

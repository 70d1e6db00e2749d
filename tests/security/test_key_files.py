"""Every private key Troop writes is owner-read-only (0400), in an owner-only directory."""

from __future__ import annotations

import stat
from pathlib import Path

from troop_client import TroopClient
from troop_client.settings import ClientSettings
from troop_coordinator.admin import rotate_ticket_key

OWNER_ONLY = 0o400


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_user_identity_file_is_owner_only(tmp_path: Path) -> None:
    settings = ClientSettings(config_dir=tmp_path / "config")
    async with TroopClient.from_settings(settings):
        pass
    assert mode(settings.identity_path) == OWNER_ONLY


async def test_node_owner_and_ticket_keys_are_owner_only(mesh_factory) -> None:
    async with mesh_factory(workers=1, with_pem=False) as mesh:
        worker = mesh.workers[0]
        assert mode(worker.settings.data_dir / "node.key") == OWNER_ONLY
        assert mode(worker.settings.data_dir / "owner.key") == OWNER_ONLY
        settings = mesh.coordinator.settings
        await rotate_ticket_key(settings)
        keys = sorted(settings.ticket_keys_dir.glob("*.pem"))
        assert len(keys) == 2
        assert all(mode(k) == OWNER_ONLY for k in keys)
        assert mode(settings.ticket_keys_dir) == 0o700

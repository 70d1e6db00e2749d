"""The verifier's identities against a real coordinator: each joins and can pay, and a
renewed one is a new key that joins in its place while the old key is kept aside."""

from __future__ import annotations

from pathlib import Path

from troop_verifier.identities import IdentityPool
from troop_verifier.settings import VerifierSettings


async def test_a_renewed_identity_is_a_new_joined_key_and_the_old_one_is_kept(
    start_mesh, tmp_path: Path
) -> None:
    async with start_mesh() as mesh:
        settings = VerifierSettings.from_env(
            {
                "TROOP_COORDINATOR": mesh.coordinator,
                "TROOP_CONFIG_DIR": str(tmp_path / "verifier"),
                "TROOP_VERIFIER_IDENTITIES": "2",
            }
        )
        pool = IdentityPool(settings)
        try:
            first, second = await pool.open()
            assert first.public_key != second.public_key
            assert (await first.balance()).balance_millicredits > 0  # joined: can pay

            renewed = await pool.renew(first)
            assert renewed.public_key not in (first.public_key, second.public_key)
            assert (await renewed.balance()).balance_millicredits > 0
            assert settings.retired_path(first.public_key).is_file()
            # The renewed key took the old one's file: a restart keeps using it.
            reopened = IdentityPool(settings)
            try:
                keys = [c.public_key for c in await reopened.open()]
            finally:
                await reopened.close()
            assert keys == [renewed.public_key, second.public_key]
        finally:
            await pool.close()

"""Rotating the coordinator's ticket key while a worker runs (short settings)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.conftest import ticket_metadata
from troop_common.tickets import ticket_kid
from troop_coordinator.admin import rotate_ticket_key

MODEL = "smollm2-135m-instruct"
GRACE_S = 2.0


async def _chat(stub, grant, user) -> list:
    from troop_common.proto import inference_pb2

    request = inference_pb2.ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    metadata = ticket_metadata(grant.ticket, user.identity, grant.job_id, grant.node_id)
    call = stub.ChatCompletion(request, metadata=metadata)
    return [c async for c in call]


async def test_rotation_without_restart_and_retired_keys_expire(mesh_factory, eventually) -> None:
    async with mesh_factory(
        workers=1,
        ticket_key_reload_s=0.1,
        ticket_key_grace_s=GRACE_S,
        worker_overrides={"key_refresh_s": 0.3},
    ) as mesh:
        user = mesh.user()
        stub = mesh.inference_stub(mesh.workers[0])
        old_grant = await user.authorize(MODEL)
        spare_old = await user.authorize(MODEL)  # kept for after the grace period
        old_kid = ticket_kid(old_grant.ticket)
        assert await _chat(stub, old_grant, user)

        new_kid = await rotate_ticket_key(mesh.coordinator.settings)
        assert new_kid != old_kid
        rotated_at = time.monotonic()

        async def signing_with_new_key() -> bool:
            grant = await user.authorize(MODEL)
            return ticket_kid(grant.ticket) == new_kid and grant

        new_grant = await eventually(signing_with_new_key, timeout_s=5)
        # The worker was not restarted: it fetches the new key on the unknown kid.
        assert await _chat(stub, new_grant, user)
        keys = {k.kid for k in (await user.get_key_set()).keys}
        assert keys == {old_kid, new_kid}  # the retired key is still in its grace period

        # After the grace period the key leaves the set, and the worker refuses it.
        await asyncio.sleep(max(0.0, GRACE_S + 0.5 - (time.monotonic() - rotated_at)))
        assert {k.kid for k in (await user.get_key_set()).keys} == {new_kid}
        await asyncio.sleep(0.4)  # > the worker's key_refresh_s
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _chat(stub, spare_old, user)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # New tickets keep working.
        assert await _chat(stub, await user.authorize(MODEL), user)


async def test_a_legacy_single_key_file_is_adopted(mesh_factory, ticket_key_pem) -> None:
    from cryptography.hazmat.primitives import serialization

    from troop_common.tickets import key_id

    legacy_kid = key_id(serialization.load_pem_private_key(ticket_key_pem, None).public_key())
    async with mesh_factory(workers=1) as mesh:
        settings = mesh.coordinator.settings
        assert not settings.ticket_key_path.exists()  # moved, not copied
        assert (settings.ticket_keys_dir / f"{legacy_kid}.pem").exists()
        grant = await mesh.user().authorize(MODEL)
        assert ticket_kid(grant.ticket) == legacy_kid

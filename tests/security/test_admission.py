"""Free identities are not a money printer: invites and proof of work gate the grant."""

from __future__ import annotations

import grpc
import pytest

from troop_client import TroopClient
from troop_common.admission import pow_ok, solve_pow
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.admin import create_invite

MODEL = "smollm2-135m-instruct"


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(TroopError) as caught:
        await call
    return caught.value.code


async def test_open_admission_stays_frictionless(mesh_factory) -> None:
    async with mesh_factory(workers=1) as mesh:
        user = mesh.user()
        assert (await user.get_admission()).mode == pb.ADMISSION_MODE_OPEN
        grant = await user.authorize(MODEL)  # implicit join on the first job
        assert grant.ticket


async def test_invite_admission_needs_a_fresh_code(mesh_factory) -> None:
    async with mesh_factory(workers=1, admission="invite") as mesh:
        code = await create_invite(mesh.coordinator.settings)
        alice, bob = mesh.user(), mesh.user()
        before = await mesh.ledger_state()
        # No implicit grant, no join without a code, no join with a wrong code.
        assert await code_of(alice.authorize(MODEL)) == grpc.StatusCode.FAILED_PRECONDITION
        assert await code_of(alice.join()) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(alice.join(invite_code="guess")) == grpc.StatusCode.PERMISSION_DENIED
        assert await mesh.ledger_state() == before
        joined = await alice.join(invite_code=code)
        assert joined.granted_millicredits > 0
        assert (await alice.join(invite_code=code)).already_joined  # idempotent, no new grant
        # The code is spent: nobody else joins with it.
        after = await mesh.ledger_state()
        assert await code_of(bob.join(invite_code=code)) == grpc.StatusCode.PERMISSION_DENIED
        assert await mesh.ledger_state() == after
        assert (await alice.authorize(MODEL)).ticket


async def test_pow_admission_is_bound_to_the_key(mesh_factory) -> None:
    async with mesh_factory(workers=1, admission="pow", pow_bits=10) as mesh:
        alice, mallory = mesh.user(), mesh.user()
        admission = await alice.get_admission()
        assert (admission.mode, admission.pow_bits) == (pb.ADMISSION_MODE_POW, 10)
        before = await mesh.ledger_state()
        assert await code_of(alice.authorize(MODEL)) == grpc.StatusCode.FAILED_PRECONDITION
        assert await code_of(alice.join(pow_nonce="0")) == grpc.StatusCode.PERMISSION_DENIED
        nonce = solve_pow(alice.identity.public_key_hex, 10)
        assert not pow_ok(mallory.identity.public_key_hex, nonce, 10)
        # A solution is good for its own key only.
        assert await code_of(mallory.join(pow_nonce=nonce)) == grpc.StatusCode.PERMISSION_DENIED
        assert await mesh.ledger_state() == before
        assert (await alice.join(pow_nonce=nonce)).granted_millicredits > 0


async def test_the_sdk_solves_the_puzzle_when_asked(mesh_factory) -> None:
    async with mesh_factory(workers=1, admission="pow", pow_bits=12) as mesh:
        async with TroopClient(mesh.address, Identity.generate()) as troop:
            joined = await troop.join()
            assert joined.granted_millicredits > 0
            assert (await troop.balance()).balance_millicredits == joined.balance_millicredits

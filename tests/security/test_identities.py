"""Identities against the real coordinator (both backends): one spelling per key, no
small-order keys, assertions bounded in time and size, wrong claim types refused clearly.

Each attack here worked on main: three spellings of one key were three accounts, the
identity point with a signature that verifies for every message was an account anyone
could act as, and an assertion dated ten years ahead was accepted and remembered for ten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable

import grpc
import jwt
import pytest
from sqlalchemy import func, select

from tests.security.conftest import MODEL, Mesh
from troop_common.assertions import COORDINATOR_AUDIENCE, verify_assertion
from troop_common.errors import AssertionInvalid
from troop_common.keys import Identity, is_public_key_hex
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.db.models import User

TEN_YEARS_S = 10 * 365 * 86_400
# Small-order points: the identity (01 00…00) and the point of order 2, (0, −1).
IDENTITY_POINT = "01" + "00" * 31
ORDER_TWO_POINT = "ec" + "ff" * 30 + "7f"
# All 8 small-order points, canonical, then non-canonical spellings of some (y ≥ p, or
# x = 0 with the sign bit set): every one is refused as a public key.
SMALL_ORDER = [
    IDENTITY_POINT,
    ORDER_TWO_POINT,
    "00" * 32,
    "00" * 31 + "80",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "ee" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "01" + "00" * 30 + "80",
]
_L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(subject: object, **changes: object) -> dict[str, object]:
    now = int(time.time())
    base = {
        "sub": subject,
        "aud": COORDINATOR_AUDIENCE,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    return {**base, **changes}


def signed(identity: Identity, **changes: object) -> str:
    """An assertion by `identity`'s own key, with claims changed (any type) and re-signed."""
    return jwt.encode(claims(identity.public_key_hex, **changes), identity.private_key, "EdDSA")


def universal(point_hex: str) -> str:
    """An assertion for a small-order `sub` with the signature (R = identity, S = 0): it
    verifies when [k]A is the identity, k = SHA-512(R‖A‖message) mod L — for the identity
    point always, for the order-2 point when k is even (a jti is drawn until it is)."""
    r = bytes.fromhex(IDENTITY_POINT)
    header = _b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    while True:
        body = _b64(json.dumps(claims(point_hex)).encode())
        message = f"{header}.{body}".encode()
        k = int.from_bytes(
            hashlib.sha512(r + bytes.fromhex(point_hex) + message).digest(), "little"
        )
        if point_hex == IDENTITY_POINT or (k % _L) % 2 == 0:
            return f"{header}.{body}.{_b64(r + bytes(32))}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def status_of(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def user_count(mesh: Mesh, public_key: str) -> int:
    async with mesh.coordinator.ledger.sessions() as session:
        statement = select(func.count()).where(func.lower(User.public_key) == public_key.lower())
        return int((await session.execute(statement)).scalar_one())


# One key, one account -----------------------------------------------------------------------


async def test_three_spellings_of_one_key_are_one_account(mesh: Mesh) -> None:
    alice = Identity.generate()
    lower = alice.public_key_hex
    stub = mesh.coordinator_stub()
    for spelling in (lower.upper(), lower[:32].upper() + lower[32:]):
        if spelling == lower:
            continue
        token = signed(alice, sub=spelling)
        error = await status_of(stub.Join(pb.JoinRequest(), metadata=bearer(token)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "lowercase" in error.details()
    joined = await stub.Join(pb.JoinRequest(), metadata=bearer(signed(alice)))
    assert joined.granted_millicredits > 0 and joined.public_key == lower
    again = await stub.Join(pb.JoinRequest(), metadata=bearer(signed(alice)))
    assert again.already_joined and again.granted_millicredits == 0
    assert await user_count(mesh, lower) == 1
    # The account's name in request fields has the same one spelling.
    error = await status_of(
        stub.GetBalance(
            pb.GetBalanceRequest(public_key=lower.upper()), metadata=bearer(signed(alice))
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    balance = await stub.GetBalance(
        pb.GetBalanceRequest(public_key=lower), metadata=bearer(signed(alice))
    )
    assert balance.balance_millicredits == joined.granted_millicredits


@pytest.mark.parametrize("point", [IDENTITY_POINT, ORDER_TWO_POINT], ids=["identity", "order2"])
async def test_a_small_order_key_is_no_account(mesh: Mesh, point: str) -> None:
    stub = mesh.coordinator_stub()
    before = await mesh.ledger_state()
    for method in (stub.Join, stub.Authorize):
        request = pb.JoinRequest() if method is stub.Join else pb.AuthorizeRequest(model=MODEL)
        error = await status_of(method(request, metadata=bearer(universal(point))))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "small order" in error.details()
    assert await user_count(mesh, point) == 0
    # ... nor a node owner credited for work.
    node = Identity.generate()
    heartbeat = pb.HeartbeatRequest(
        node_id="n-small-order",
        endpoint="127.0.0.1:9",
        models=[MODEL],
        owner_public_key=point,
    )
    error = await status_of(stub.Heartbeat(heartbeat, metadata=bearer(signed(node))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "owner_public_key" in error.details()
    assert await mesh.ledger_state() == before


def test_every_small_order_and_non_canonical_encoding_is_refused() -> None:
    assert [p for p in SMALL_ORDER if is_public_key_hex(p)] == []
    assert is_public_key_hex(Identity.generate().public_key_hex)
    assert not is_public_key_hex("ff" * 32)  # y ≥ p
    assert not is_public_key_hex("02" + "00" * 31)  # y = 2: no x on the curve


# Assertions bounded in time and size ----------------------------------------------------------


def _stored_in_memory(mesh: Mesh, jti: str) -> bool:
    return f"assertion:{jti}" in mesh.coordinator.replays._seen  # type: ignore[attr-defined]


async def _future_dated_is_refused_and_forgotten(mesh: Mesh, stored) -> None:
    alice = Identity.generate()
    stub = mesh.coordinator_stub()
    now = int(time.time())
    future = claims(alice.public_key_hex, iat=now + TEN_YEARS_S, exp=now + TEN_YEARS_S + 60)
    token = jwt.encode(future, alice.private_key, "EdDSA")
    for method, request in ((stub.Join, pb.JoinRequest()), (stub.Authorize, pb.AuthorizeRequest())):
        error = await status_of(method(request, metadata=bearer(token)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "future" in error.details()
    assert not await stored(str(future["jti"]))
    assert await user_count(mesh, alice.public_key_hex) == 0
    # Within the skew (a client clock a few seconds fast) is fine; its entry lives as long
    # as the assertion is accepted, never longer.
    near = claims(alice.public_key_hex, iat=now + 10, exp=now + 70)
    await stub.Join(pb.JoinRequest(), metadata=bearer(jwt.encode(near, alice.private_key, "EdDSA")))
    assert await stored(str(near["jti"]))


async def test_a_future_dated_assertion_is_refused_and_not_remembered(mesh: Mesh) -> None:
    async def stored(jti: str) -> bool:
        return _stored_in_memory(mesh, jti)

    await _future_dated_is_refused_and_forgotten(mesh, stored)


async def test_a_future_dated_assertion_is_not_remembered_in_redis(
    mesh_factory, redis_url: str, redis_client, redis_prefix: str
) -> None:
    async with mesh_factory(redis_url=redis_url, redis_prefix=redis_prefix, workers=0) as mesh:

        async def stored(jti: str) -> bool:
            key = f"{redis_prefix}replay:assertion:{jti}"
            if not await redis_client.exists(key):
                return False
            ttl_ms = await redis_client.pttl(key)
            assert 0 < ttl_ms <= (70 + 5) * 1000  # exp + leeway, not a moment more
            return True

        await _future_dated_is_refused_and_forgotten(mesh, stored)


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"iat": "abc"}, "iat"),
        ({"exp": "x"}, "exp"),
        ({"sub": 5}, "sub"),
        ({"iat": None}, "iat"),
        ({"exp": [1]}, "exp"),
        ({"jti": 7}, "jti"),
        ({"jti": "x" * 129}, "jti"),
        ({"jti": "a b/c" * 5}, "jti"),
        ({"jti": "y" * 1000}, "jti"),
        ({"exp": int(time.time()) + 3600}, "lifetime"),
        ({"exp": int(time.time()) - 100}, "lifetime"),
    ],
    ids=(
        "iat-abc exp-x sub-5 iat-null exp-list jti-int jti-129 jti-chars jti-1000 too-long "
        "exp-before-iat"
    ).split(),
)
async def test_claims_of_the_wrong_type_or_size_are_unauthenticated_with_a_reason(
    mesh: Mesh, change: dict[str, object], reason: str
) -> None:
    alice = Identity.generate()
    stub = mesh.coordinator_stub()
    before = await mesh.ledger_state()
    error = await status_of(stub.Join(pb.JoinRequest(), metadata=bearer(signed(alice, **change))))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert reason in error.details()
    assert await mesh.ledger_state() == before


def test_a_ten_kilobyte_jti_is_refused_before_it_is_parsed() -> None:
    alice = Identity.generate()
    with pytest.raises(AssertionInvalid, match="longer than"):
        verify_assertion(signed(alice, jti="j" * 10_240), COORDINATOR_AUDIENCE)
    with pytest.raises(AssertionInvalid, match="jti"):
        verify_assertion(signed(alice, jti="j" * 1_000), COORDINATOR_AUDIENCE)

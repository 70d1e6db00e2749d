"""Spoofed addresses and floods of cheap calls, against the real coordinator (and workers).

Each attack is bounded in count and aimed at 127.0.0.1 only. The REST face's
Envoy is exercised in tests/http/test_face_floods.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.security.conftest import MODEL, coordinator_settings
from troop_common.assertions import create_assertion
from troop_common.audit_throttle import SUPPRESSED_ACTION, SecurityEventLimits
from troop_common.errors import RateLimited
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import coordinator_pb2_grpc
from troop_coordinator.app import Coordinator
from troop_coordinator.audit_store import AuditStore
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.settings import DEFAULT_RATE_LIMITS


def _signed(identity: Identity) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {create_assertion(identity)}")]


async def _limited(call: object) -> bool:
    """Whether the rate limiter refused the call (not the handler, for its own reasons)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        limited = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return limited and (exc.details() or "").startswith("rate limit")
    return False


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_spoofed_xff_from_an_untrusted_peer_is_limited_by_the_peer_address(
    tmp_path: Path, sqlite_url: str, ticket_key_pem: bytes
) -> None:
    settings = coordinator_settings(
        tmp_path,
        sqlite_url,
        ticket_key_pem,
        rate_limits="ListNodes+ListModels=5/3600@ip",
        trusted_proxies=("192.0.2.1",),  # not this test's loopback peer
    )
    async with Coordinator(settings) as coordinator:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            codes = [
                await _code(
                    stub.ListNodes(
                        pb.ListNodesRequest(),
                        metadata=[("x-forwarded-for", f"198.51.100.{n}")],
                    )
                )
                for n in range(10)
            ]
    assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5


async def test_proof_rpc_floods_are_limited_per_node_key(
    tmp_path: Path, sqlite_url: str, ticket_key_pem: bytes
) -> None:
    settings = coordinator_settings(
        tmp_path, sqlite_url, ticket_key_pem, rate_limits=DEFAULT_RATE_LIMITS
    )
    flooder, other = Identity.generate(), Identity.generate()
    node_id, challenge_id = secrets.token_hex(16), secrets.token_hex(16)
    async with Coordinator(settings) as coordinator:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)

            def proof_calls(identity: Identity, n: int) -> list[Callable[[], object]]:
                start = pb.StartChallengeRequest(node_id=node_id, challenge_id=challenge_id)
                commit = pb.CommitProofRequest(node_id=node_id, challenge_id=challenge_id)
                verify = pb.VerifyProofRequest(node_id=node_id, challenge_id=challenge_id)
                rpcs = [
                    lambda: stub.StartChallenge(start, metadata=_signed(identity)),
                    lambda: stub.CommitProof(commit, metadata=_signed(identity)),
                    lambda: stub.VerifyProof(verify, metadata=_signed(identity)),
                ]
                return [rpcs[i % 3] for i in range(n)]  # each started when awaited

            proofs = [await _limited(call()) for call in proof_calls(flooder, 40)]
            challenges = [
                await _limited(
                    stub.GetChallenge(
                        pb.GetChallengeRequest(node_id=node_id), metadata=_signed(flooder)
                    )
                )
                for _ in range(35)
            ]
            # Another node key has its own bucket.
            others = [await _limited(call()) for call in proof_calls(other, 3)]
    assert proofs == [False] * 30 + [True] * 10
    assert challenges == [False] * 30 + [True] * 5
    assert others == [False] * 3


async def test_garbage_token_flood_leaves_the_audit_table_bounded(
    tmp_path: Path, postgres_url: str, ticket_key_pem: bytes
) -> None:
    flood, limits = 2000, SecurityEventLimits()
    settings = coordinator_settings(tmp_path, postgres_url, ticket_key_pem)
    async with Coordinator(settings) as coordinator:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = pb.GetBalanceRequest(public_key="00" * 32)

            async def garbage(n: int) -> grpc.StatusCode:
                token = [("authorization", f"Bearer {secrets.token_urlsafe(24)}.{n}")]
                return await _code(stub.GetBalance(request, metadata=token))

            codes: list[grpc.StatusCode] = []
            for start in range(0, flood, 50):  # 50 in flight at a time
                codes += await asyncio.gather(*(garbage(n) for n in range(start, start + 50)))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    # Read back after the coordinator stopped (it writes the window's summary on close).
    engine = create_engine(postgres_url)
    try:
        store = AuditStore(session_factory(engine))
        rows = [row.event for row in await store.events(limit=10 * flood)]
        report = await store.verify()
    finally:
        await engine.dispose()
    assert report.ok, report
    assert len(rows) <= limits.rows_per_window
    stored = [r for r in rows if r.get("action") != SUPPRESSED_ACTION]
    summaries = [r for r in rows if r.get("action") == SUPPRESSED_ACTION]
    assert len(stored) == limits.per_source
    assert {r["peer_ip"] for r in stored + summaries} == {"127.0.0.1"}
    assert sum(r["suppressed"] for r in summaries) == flood - len(stored)
    assert "suppressed" in summaries[0]["reason"]


async def test_seventeenth_open_job_is_refused_with_how_to_raise_it(
    mesh_factory, tmp_path: Path
) -> None:
    async with mesh_factory(workers=1) as mesh:
        user = mesh.user()
        for _ in range(16):
            await user.authorize(MODEL, max_tokens=8, max_prompt_tokens=16)
        with pytest.raises(RateLimited) as refused:
            await user.authorize(MODEL, max_tokens=8, max_prompt_tokens=16)
        # Another user is not held back by this one's jobs.
        await mesh.user().authorize(MODEL, max_tokens=8, max_prompt_tokens=16)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "TROOP_MAX_OPEN_JOBS_PER_USER" in refused.value.message
    assert "retry" in refused.value.message
    assert refused.value.retry_after_seconds > 0

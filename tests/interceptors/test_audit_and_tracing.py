"""Request ids, timing, audit lines and the audit chain, through real servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from tests.conftest import ticket_metadata
from troop_client import ChatOptions, Message, TroopClient
from troop_common import request_context
from troop_common.assertions import create_assertion
from troop_common.errors import AuthError, RateLimited
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import coordinator_pb2_grpc
from troop_coordinator.audit_store import AuditStore

MODEL = "smollm2-135m-instruct"


def audit_lines(directory: Path) -> list[dict]:
    lines = []
    for path in sorted(directory.glob("*-audit.jsonl*")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


async def test_request_id_and_server_time_come_back_on_success_and_failure(
    start_coordinator,
) -> None:
    coordinator = await start_coordinator()
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        call = stub.ListModels(pb.ListModelsRequest(), metadata=[("x-request-id", "ops-42")])
        await call
        assert dict(await call.initial_metadata())["x-request-id"] == "ops-42"
        assert dict(await call.trailing_metadata())["x-response-time"].endswith("ms")

        failing = stub.GetBalance(pb.GetBalanceRequest(public_key="00" * 32))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await failing
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        trailers = dict(refused.value.trailing_metadata())
        assert len(trailers["x-request-id"]) == 32  # none given: one was made
        assert trailers["x-response-time"].endswith("ms")


async def test_one_request_id_is_in_every_components_audit_log(
    start_coordinator, start_worker, eventually
) -> None:
    coordinator = await start_coordinator()
    worker = await start_worker(coordinator)
    user = Identity.generate()
    token = request_context.current.set(request_context.RequestInfo(request_id="trace-me-1"))
    try:
        async with TroopClient(coordinator.address, user) as client:
            await client.complete([Message("user", "hi")], options=ChatOptions(max_tokens=4))
    finally:
        request_context.current.reset(token)

    coordinator_dir = coordinator.settings.effective_audit_dir
    worker_dir = worker.settings.data_dir / "audit"

    def traced(directory: Path, action: str) -> list[dict]:
        return [
            line
            for line in audit_lines(directory)
            if line["request_id"] == "trace-me-1" and line["action"] == action
        ]

    # The worker's receipt reaches the coordinator after the stream: wait for its line.
    await eventually(lambda: traced(coordinator_dir, "SubmitReceipt"), timeout_s=15)
    (authorize,) = traced(coordinator_dir, "Authorize")
    (stream,) = traced(worker_dir, "ChatCompletion")
    assert authorize["principal"] == stream["principal"] == user.public_key_hex
    assert authorize["outcome"] == stream["outcome"] == "OK"
    assert stream["messages"] > 1  # a streaming call is audited when it ends
    for line in (authorize, stream):
        assert line["peer_ip"] == "127.0.0.1"
        assert line["latency_ms"] >= 0
        assert line["ts"].endswith("+00:00")


async def test_a_streaming_call_is_authenticated_audited_and_limited(
    start_coordinator, start_worker
) -> None:
    coordinator = await start_coordinator()
    worker = await start_worker(coordinator, rate_limits="ChatCompletion=2/3600@user")
    user = Identity.generate()
    async with TroopClient(coordinator.address, user) as client:
        for _ in range(2):
            await client.complete([Message("user", "hi")], options=ChatOptions(max_tokens=2))
        received = []
        with pytest.raises(RateLimited) as limited:
            async for chunk in client.chat([Message("user", "hi")]):
                received.append(chunk)
    assert received == []
    assert limited.value.retry_after_seconds > 0

    lines = [
        line
        for line in audit_lines(worker.settings.data_dir / "audit")
        if line["action"] == "ChatCompletion"
    ]
    assert [line["outcome"] for line in lines] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    assert lines[-1]["principal"] == user.public_key_hex
    assert lines[-1]["error"] == "RateLimited"


async def test_security_events_go_to_a_hash_chained_table_that_detects_tampering(
    start_coordinator, eventually
) -> None:
    coordinator = await start_coordinator()
    user = Identity.generate()
    assertion = create_assertion(user)
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        request = pb.GetBalanceRequest(public_key=user.public_key_hex)
        metadata = [("authorization", f"Bearer {assertion}")]
        await stub.GetBalance(request, metadata=metadata)
        for _ in range(3):  # replays
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetBalance(request, metadata=metadata)
    store: AuditStore = coordinator.audit_events

    async def stored() -> bool:
        return len(await store.events()) >= 3

    await eventually(stored)  # the three refusals reach the audit table
    events = await store.events()
    assert {e.event["action"] for e in events} == {"GetBalance"}
    assert all(e.event["outcome"] == "UNAUTHENTICATED" for e in events)
    assert all("already used" in e.event["reason"] for e in events)
    assert (await store.verify()).ok

    # Tamper with the second event (dropping the append-only trigger first, as an
    # attacker with database access could): the chain names the row.
    async with coordinator.engine.begin() as connection:
        await connection.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        await connection.exec_driver_sql(
            "UPDATE audit_events SET event = json_set(event, '$.reason', 'nothing') WHERE seq = 2"
        )
    report = await store.verify()
    assert not report.ok and report.broken_at == 2


async def test_audit_rows_cannot_be_updated_or_deleted(start_coordinator) -> None:
    coordinator = await start_coordinator()
    await coordinator.audit_events.append({"action": "test", "outcome": "OK"})
    for statement in ("UPDATE audit_events SET hash = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"):
            async with coordinator.engine.begin() as connection:
                await connection.exec_driver_sql(statement)
    assert (await coordinator.audit_events.verify()).ok


async def test_a_failing_audit_store_never_fails_a_request(
    start_coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self, event) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(AuditStore, "append", broken)
    coordinator = await start_coordinator()
    user = Identity.generate()
    async with TroopClient(coordinator.address, user) as client:
        with pytest.raises(AuthError):  # a security event, whose storing fails
            await client.coordinator._call(
                client.coordinator.stub.Join, pb.JoinRequest(), signed=False
            )
        assert (await client.join()).granted_millicredits > 0  # service goes on


async def test_no_log_line_contains_a_ticket_assertion_or_key(
    start_coordinator, start_worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    coordinator = await start_coordinator()
    worker = await start_worker(coordinator)
    user = Identity.generate()
    secrets_seen: list[str] = []
    async with TroopClient(coordinator.address, user) as client:
        grant = await client.coordinator.authorize(MODEL)
        secrets_seen.append(grant.ticket)
        await client.complete([Message("user", "hi")], options=ChatOptions(max_tokens=2))
        # Failures carry secrets in their requests: a reused ticket, a replayed assertion.
        async with grpc.aio.insecure_channel(worker.address) as channel:
            from troop_common.proto import inference_pb2, inference_pb2_grpc

            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.ChatCompletionRequest(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
            for _ in range(2):
                metadata = ticket_metadata(grant.ticket, user, grant.job_id, grant.node_id)
                call = stub.ChatCompletion(request, metadata=metadata)
                try:
                    async for _chunk in call:
                        pass
                except grpc.aio.AioRpcError:
                    pass
        assertion = create_assertion(user)
        secrets_seen.append(assertion)
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            for _ in range(2):
                try:
                    await stub.Join(
                        pb.JoinRequest(), metadata=[("authorization", f"Bearer {assertion}")]
                    )
                except grpc.aio.AioRpcError:
                    pass
    key_files = [
        coordinator.settings.data_dir / "ticket-key.pem",
        worker.settings.data_dir / "node.key",
        worker.settings.data_dir / "owner.key",
    ]
    private_pems = [p.read_text() for p in key_files if p.exists()]
    assert private_pems
    logs = caplog.text
    for directory in (coordinator.settings.effective_audit_dir, worker.settings.data_dir / "audit"):
        for path in directory.glob("*-audit.jsonl*"):
            logs += path.read_text()
    assert "UNAUTHENTICATED" in logs  # the refusals were logged...
    for secret in secrets_seen:
        assert secret not in logs  # ...without the secrets they carried
        assert secret.split(".")[2] not in logs  # not even the signature part
    for pem in private_pems:
        body = "".join(pem.splitlines()[1:-1])
        assert body[:40] not in logs
    assert "PRIVATE KEY" not in logs


async def test_audit_lines_are_written_whole_and_rotate_at_the_size_limit(tmp_path: Path) -> None:
    from troop_common.audit import AuditLog

    audit = AuditLog(tmp_path, "unit", max_bytes=4096, backups=50)
    events = [{"method": "/troop.v1.Test/Call", "n": n, "pad": "x" * 60} for n in range(500)]
    for event in events:
        audit.record(event)
    await audit.close()
    files = sorted(tmp_path.glob("unit-audit.jsonl*"))
    assert len(files) > 5  # ~50 KB of lines in files of at most 4 KB
    seen = []
    for file in files:
        text = file.read_text()
        assert len(text.encode()) <= 4096 or text.count("\n") == 1
        assert text.endswith("\n")
        seen += [json.loads(line)["n"] for line in text.splitlines()]  # every line whole
        assert file.stat().st_mode & 0o077 == 0  # private, rotated files too
    assert sorted(seen) == list(range(500))

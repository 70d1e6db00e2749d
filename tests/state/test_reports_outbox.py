"""A client's countersignatures survive a coordinator outage and the client stopping: the
coordinator dies while an answer streams, the SDK (built from settings, as the CLI and the
sidecar are) is closed with its report undelivered, and once the coordinator is back a new
SDK on the same config dir sends it: the job ends countersigned, charged once."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import free_port
from troop_client import ChatOptions, ClientSettings, Message, TroopClient
from troop_common.proto import coordinator_pb2 as pb

from . import conftest as state

PROMPT = " ".join(f"w{n}" for n in range(60))


async def test_a_countersignature_waits_out_a_coordinator_outage_and_a_client_restart(
    network: state.Network, tmp_path: Path, eventually
) -> None:
    port = free_port()
    wait = {"TROOP_COUNTERSIGN_SECONDS": "3600"}  # the job must wait for the client's word
    coordinator = await network.coordinator("c1.log", port=port, **wait)
    worker = network.fake_worker(coordinator.address, "worker")
    settings = ClientSettings(coordinator=coordinator.address, config_dir=tmp_path / "config")
    outbox = tmp_path / "config" / "reports-outbox"

    async with TroopClient.from_settings(settings) as client:

        async def listed() -> bool:
            assert worker.popen.poll() is None, worker.output()
            return bool(await client.nodes(state.MODEL))

        await eventually(listed, timeout_s=60)
        chunks = []
        options = ChatOptions(temperature=0.0, max_tokens=100)
        async for chunk in client.chat([Message("user", PROMPT)], options=options):
            chunks.append(chunk)
            if len(chunks) == 3:  # the coordinator dies mid-answer; the worker carries on
                coordinator.kill(signal.SIGKILL)
                await coordinator.wait()
        job_id = chunks[0].job_id
        assert "".join(c.text for c in chunks) == f"You said: {PROMPT}"
    # Closed with the coordinator away: the report is kept, not lost.
    assert len(list(outbox.rglob("*.msg"))) == 1

    coordinator = await network.coordinator("c2.log", port=port, **wait)
    async with TroopClient.from_settings(settings) as client:  # sends what it found

        async def countersigned() -> bool:
            job = await client.coordinator.get_job(job_id)
            return job.countersigned and job.state == pb.JOB_STATE_CHARGED

        await eventually(countersigned, timeout_s=60)
        assert list(outbox.rglob("*.msg")) == []
        job = await client.job(job_id)
        history = (await client.history(page_size=100)).items
        settles = [t for t in history if t.job_id == job_id and t.kind != "reserve"]
        assert job.charged_millicredits > 0 and len(settles) == 1

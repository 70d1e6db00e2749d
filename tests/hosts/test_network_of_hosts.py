"""A network of hosts on one machine (Linux network namespaces on a bridge, tests/hosts/
netns.py), TLS between every two of them:

- the coordinator's host is the root namespace: the coordinator is bound to its own
  address on the bridge, not to loopback, and reaches PostgreSQL and Redis on loopback
  there, as a coordinator beside its databases would;
- two workers (the fake engine, one word a token every 20 ms), each in its namespace and
  bound to its address there, with a certificate for that address;
- the client (the SDK, tests/hosts/chat.py) in a fourth, trusting the test's CA.

A first chat streams and settles. During a second, the link of the worker streaming it is
cut (its bridge port goes down: no reset, no close, nothing more arrives): the client's
keepalive finds it gone (TROOP_KEEPALIVE_SECONDS, ADR 55), the answer resumes on the other
worker, and the client's output is the whole answer, no word lost or repeated. The cut
worker never sends its receipt: its job settles on the client's countersignature, and the
ledger's audit passes.

Skipped where namespaces cannot be made (not Linux, not root); under CI=true that fails.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from tests.pki import TestCA
from tests.state import conftest as state
from troop_client import ClientSettings, TroopClient
from troop_common.keys import Identity
from troop_common.tls import TlsSettings

from .netns import Hosts

SHORT = "across the bridge"
WORDS = " ".join(f"w{n}" for n in range(300))  # ~6 s at the fake engine's pace
CUT_AFTER = 30  # chunks the client shows before its worker's link is cut
KEEPALIVE_S = "1"
STARTER_MILLICREDITS = 3_600_000  # the coordinator's default starter credits
DEADLINE_S = 120  # the whole test, start to audit


def chunks(client: state.Process) -> list[dict]:
    """What the client program printed so far, one object a line (the last may be cut)."""
    lines = client.output().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return parsed


async def test_a_chat_across_hosts_survives_a_cut_link(
    hosts: Hosts, network: state.Network, tmp_path: Path, eventually
) -> None:
    async with asyncio.timeout(DEADLINE_S):
        await _across_hosts(hosts, network, tmp_path, eventually)


async def _across_hosts(hosts: Hosts, network: state.Network, tmp_path: Path, eventually):
    workers = {name: hosts.add(name) for name in ("w1", "w2")}
    client_host = hosts.add("cl")
    ca = TestCA(tmp_path / "pki")
    trusting = TlsSettings(ca_file=ca.ca_file)

    cert, key = ca.issue("coordinator", [hosts.gateway])
    coordinator = await network.coordinator(
        host=hosts.gateway,
        tls=trusting,
        TROOP_TLS_CERT=str(cert),
        TROOP_TLS_KEY=str(key),
        TROOP_TLS_CA=str(ca.ca_file),  # it dials the workers to prove their endpoints
        TROOP_COUNTERSIGN_SECONDS="1",  # the cut worker's job settles on the client's word
        TROOP_SWEEP_INTERVAL_SECONDS="0.2",
    )
    processes = {}
    for name, host in workers.items():
        cert, key = ca.issue(name, [host.address])
        processes[name] = network.fake_worker(
            coordinator.address,
            name,
            prefix=host.exec,
            TROOP_WORKER_HOST=host.address,
            TROOP_TLS_CERT=str(cert),
            TROOP_TLS_KEY=str(key),
            TROOP_TLS_CA=str(ca.ca_file),
        )

    config = tmp_path / "client"
    identity = Identity.load_or_create(config / "identity.key")  # the client host's user
    client_env = {
        "TROOP_COORDINATOR": coordinator.address,
        "TROOP_TLS_CA": str(ca.ca_file),
        "TROOP_CONFIG_DIR": str(config),
        "TROOP_KEEPALIVE_SECONDS": KEEPALIVE_S,
    }

    def chat(words: str, log: str) -> state.Process:
        log_file = tmp_path / log
        return network.start("tests.hosts.chat", client_env, log_file, client_host.exec, [words])

    # The test looks on from the coordinator's host, as the same user, over TLS.
    settings = ClientSettings(coordinator=coordinator.address, tls=trusting)
    async with TroopClient(coordinator.address, identity, settings) as user:

        async def both_listed() -> bool:
            for process in processes.values():
                assert process.popen.poll() is None, process.output()
            endpoints = {n.endpoint.rsplit(":", 1)[0] for n in await user.nodes(state.MODEL)}
            return endpoints == {host.address for host in workers.values()}

        await eventually(both_listed, timeout_s=60)

        # A chat streams from a worker's host to the client's, and its job settles.
        first = chat(SHORT, "chat-1.log")
        assert await first.wait(30) == 0, first.output()
        lines = chunks(first)
        assert lines[-1] == {"answer": f"You said: {SHORT}"}, first.output()
        first_job = lines[0]["job_id"]

        async def first_charged() -> bool:
            return (await user.job(first_job)).state == "charged"

        await eventually(first_charged, timeout_s=30)

        # A second: the link of the worker streaming it is cut in the middle.
        second = chat(WORDS, "chat-2.log")

        async def streaming() -> bool:
            assert second.popen.poll() is None, second.output()
            return len(chunks(second)) >= CUT_AFTER

        await eventually(streaming, timeout_s=30, interval_s=0.01)
        cut_job = chunks(second)[0]["job_id"]
        cut = (await user.job(cut_job)).node_id
        workers[cut].cut()
        cut_at = time.time()
        assert await second.wait(30) == 0, second.output()
        lines = chunks(second)
        assert lines[-1] == {"answer": f"You said: {WORDS}"}, second.output()
        streamed = lines[:-1]
        assert "".join(line["text"] for line in streamed) == f"You said: {WORDS}"
        jobs = list(dict.fromkeys(line["job_id"] for line in streamed))
        assert len(jobs) == 2 and jobs[0] == cut_job, "the answer came from two jobs"
        resumed = next(line for line in streamed if line["job_id"] == jobs[1])
        assert resumed["text"], second.output()
        assert (await user.job(jobs[1])).node_id != cut
        ended = time.time() - cut_at
        print(f"resumed {resumed['t'] - cut_at:.2f} s after the cut, ended {ended:.2f} s after")
        processes[cut].kill(signal.SIGKILL)  # nothing reaches it any more: no use waiting

        # Every job settles: the cut node's on what the client vouched it received.
        all_jobs = [first_job, *jobs]

        async def all_charged() -> bool:
            return all([(await user.job(job)).state == "charged" for job in all_jobs])

        await eventually(all_charged, timeout_s=30)
        cut_record = await user.coordinator.get_job(cut_job)
        assert not cut_record.receipt_received and cut_record.countersigned
        assert cut_record.charged_millicredits > 0
        charged = sum([(await user.job(job)).charged_millicredits for job in all_jobs])
        balance = await user.balance()
        assert (balance.balance_millicredits, balance.reserved_millicredits) == (
            STARTER_MILLICREDITS - charged,
            0,
        )

    await network.audit_ledger()

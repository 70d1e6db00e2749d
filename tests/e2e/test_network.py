"""One request travelling the whole path over gRPC, with credits moving."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import free_port
from troop_client import ChatOptions, Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import NodeUnavailable
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_worker.engine.fake import FakeEngine

STARTER = 3_600_000
MODEL = "smollm2-135m-instruct"


async def settled(client: TroopClient, eventually) -> None:
    async def no_open_reservation() -> bool:
        return (await client.balance()).reserved_millicredits == 0

    await eventually(no_open_reservation, timeout_s=20)


async def test_a_chat_streams_and_moves_credits_from_user_to_owner(network, eventually) -> None:
    async with (
        TroopClient(network.coordinator, Identity.generate()) as user,
        TroopClient(network.coordinator, network.owner) as owner,
    ):
        await user.join()
        user_before = (await user.balance()).balance_millicredits
        owner_before = (await owner.balance()).balance_millicredits
        assert user_before == STARTER

        chunks = [c async for c in user.chat([Message("user", "tell me about the network")])]
        await settled(user, eventually)

        assert len(chunks) > 1
        assert "".join(c.text for c in chunks).strip()
        assert chunks[-1].finish_reason in ("stop", "length")
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        user_after = (await user.balance()).balance_millicredits
        owner_after = (await owner.balance()).balance_millicredits
        assert user_after < user_before
        assert owner_after - owner_before == user_before - user_after
        # The job itself says it settled, and for exactly what moved.
        job = await user.job(chunks[-1].job_id)
        assert job.settled and job.state == "charged" and not job.disputed
        assert job.charged_millicredits == user_before - user_after


async def test_credits_are_conserved_across_completed_and_abandoned_jobs(
    network, eventually
) -> None:
    async with (
        TroopClient(network.coordinator, Identity.generate()) as user,
        TroopClient(network.coordinator, network.owner) as owner,
    ):
        await user.complete([Message("user", "one")], options=ChatOptions(max_tokens=4))
        await settled(user, eventually)
        # A job authorized but never run: its reservation stays open until it expires.
        await user.authorize("smollm2-135m-instruct")
        user_balance = await user.balance()
        owner_balance = await owner.balance()
        assert user_balance.reserved_millicredits > 0
        total = (
            user_balance.balance_millicredits
            + user_balance.reserved_millicredits
            + owner_balance.balance_millicredits
            + owner_balance.reserved_millicredits
        )
        assert total == STARTER  # one grant was minted; not a millicredit more or less


async def test_a_model_nobody_serves_is_unavailable_and_reserves_nothing(network) -> None:
    async with TroopClient(network.coordinator, Identity.generate()) as user:
        await user.join()
        with pytest.raises(NodeUnavailable):
            await user.complete([Message("user", "hi")], model="no-such-model")
        assert (await user.balance()).reserved_millicredits == 0
        assert (await user.balance()).balance_millicredits == STARTER


async def test_a_node_nobody_can_reach_is_not_listed_and_charges_nothing(
    start_mesh, eventually, caplog
) -> None:
    # The worker advertises an address where nothing listens (a wrong --advertise).
    dead = f"127.0.0.1:{free_port()}"
    async with (
        start_mesh(advertise=dead, wait_listed=False) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as user,
    ):
        # The worker itself noticed, and said so where its operator looks.
        assert await mesh.worker.reachability == "cannot reach the server (connection refused)"
        assert f"the advertised endpoint {dead} does not answer" in caplog.text
        # The coordinator dialled it too, found no node key there, and does not list it:
        # no client is ever sent to a dead address.
        await eventually(lambda: mesh.worker.heartbeats.sent >= 2, timeout_s=10)
        assert not mesh.worker.heartbeats.endpoint_proven
        assert "has not proven this node's endpoint" in caplog.text
        await user.join()
        with pytest.raises(NodeUnavailable, match="no live node serves"):
            await user.complete([Message("user", "hi")])
        balance = await user.balance()
    # Nothing was reserved, nothing charged.
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER, 0)


async def test_an_unreachable_node_is_skipped_for_another(start_mesh, eventually, caplog) -> None:
    async with (
        # 0.2 s a word: the long job (256 words) outlasts the test by far. The endpoint
        # proof is off: the ghost stands for a node that proved its endpoint and died since
        # (tests/security proves a never-reachable node is not listed at all).
        start_mesh(
            engine=FakeEngine([MODEL], delay_s=0.2),
            coordinator_overrides={"verify_node_endpoints": False},
        ) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as busy,
        TroopClient(mesh.coordinator, Identity.generate()) as user,
        CoordinatorClient(mesh.coordinator) as discovery,
    ):
        # The real worker gets one long job, so it ranks below an idle node...
        long_job = busy.chat([Message("user", "word " * 200)])
        await anext(long_job)

        async def worker_reports_the_job() -> bool:
            nodes = (await discovery.list_nodes()).nodes
            return [n.load.active_jobs for n in nodes] == [1]

        await eventually(worker_reports_the_job, timeout_s=10)
        # ... and a ghost that heartbeats but cannot be reached ranks first.
        ghost, dead = Identity.generate(), f"127.0.0.1:{free_port()}"
        async with CoordinatorClient(mesh.coordinator, ghost) as ghost_client:
            await ghost_client.heartbeat(
                pb.HeartbeatRequest(
                    node_id="ghost", endpoint=dead, models=[MODEL],
                    load=pb.NodeLoad(max_concurrent_jobs=4),
                    owner_public_key=ghost.public_key_hex,
                )
            )  # fmt: skip

        answer = await user.complete([Message("user", "are you there")])

        assert answer.text == "You said: are you there"  # served by the real worker
        assert f"cannot reach node ghost at {dead}" in caplog.text
        await long_job.aclose()

        async def nothing_is_held() -> bool:
            return (await user.balance()).reserved_millicredits == 0

        # The client countersigned 0 tokens for the ghost's job: its reservation returned at
        # once (not when the ticket expires), refunded whole.
        await eventually(nothing_is_held, timeout_s=20)
        entries = (await user.history()).items
        refunds = [t for t in entries if t.kind == "refund"]
        reserves = [t for t in entries if t.kind == "reserve"]
        assert len(refunds) == 1 and len(reserves) == 2
        ghost_job = refunds[0].job_id
        assert [-t.amount_millicredits for t in reserves if t.job_id == ghost_job] == [
            refunds[0].amount_millicredits
        ]


async def test_a_reachable_advertised_endpoint_passes_the_workers_check(start_mesh) -> None:
    port = free_port()
    async with start_mesh(port=port, advertise=f"localhost:{port}") as mesh:
        assert await mesh.worker.reachability is None


async def run(*args: str) -> tuple[int, str, str]:
    """A real subprocess, awaited, so the in-process servers keep answering meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("which", ["coordinator", "worker"])
async def test_grpcurl_lists_services_and_health_is_serving(network, grpcurl, which: str) -> None:
    address = getattr(network, which)
    code, out, err = await run(grpcurl, "-plaintext", address, "list")
    assert code == 0, err
    service = (
        "troop.v1.CoordinatorService" if which == "coordinator" else "troop.v1.InferenceService"
    )
    assert service in out.split()
    assert "grpc.health.v1.Health" in out.split()
    code, out, err = await run(grpcurl, "-plaintext", address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert '"status": "SERVING"' in out


async def test_tokens_arrive_incrementally_through_the_whole_path(network) -> None:
    async with TroopClient(network.coordinator, Identity.generate()) as user:
        arrivals = []
        async for _chunk in user.chat([Message("user", "count to ten slowly")]):
            arrivals.append(time.monotonic())
        assert len(arrivals) > 3
        # The first piece was in the caller's hands while the rest was still being made.
        assert arrivals[0] < arrivals[-1]
        assert sum(1 for t in arrivals if t > arrivals[0]) >= len(arrivals) - 2


@pytest.mark.model
async def test_the_real_model_answers_token_by_token_and_is_billed(
    model_network, eventually
) -> None:
    question = [Message("user", "What is the capital of France?")]
    async with TroopClient(model_network.coordinator, Identity.generate()) as user:
        arrivals, parts, usage = [], [], None
        async for chunk in user.chat(question, options=ChatOptions(temperature=0, max_tokens=24)):
            arrivals.append(time.monotonic())
            parts.append(chunk.text)
            usage = chunk.usage or usage
        await settled(user, eventually)
        balance = (await user.balance()).balance_millicredits
    assert "Paris" in "".join(parts)
    # Many pieces, the first in hand long before the last: streamed, not buffered.
    assert len([p for p in parts if p]) > 3
    assert arrivals[0] < arrivals[-2] < arrivals[-1]
    assert usage is not None and 0 < usage.completion_tokens <= 24
    assert 0 < STARTER - balance


@pytest.mark.model
async def test_an_honest_worker_on_the_real_model_is_paid_the_documented_formula(
    model_network, torch_engine, eventually
) -> None:
    """The charge, computed here independently: the prompt counted by the model's own
    tokenizer and chat template, the completion by a greedy `generate` of the same
    model, at the price the coordinator publishes (docs/protocol.md's formula)."""
    import torch

    question = "Name three rivers of Europe and say one thing about each."
    async with (
        TroopClient(model_network.coordinator, Identity.generate()) as user,
        TroopClient(model_network.coordinator, model_network.owner) as owner,
    ):
        (offer,) = await user.models()
        owner_before = (await owner.balance()).balance_millicredits
        answer = await user.complete(
            [Message("user", question)], options=ChatOptions(temperature=0, max_tokens=48)
        )
        await settled(user, eventually)
        spent = STARTER - (await user.balance()).balance_millicredits
        earned = (await owner.balance()).balance_millicredits - owner_before

    tokenizer, model = torch_engine.tokenizer, torch_engine.hf_model
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        generated = model.generate(
            prompt.to(model.device), max_new_tokens=48, do_sample=False, use_cache=True
        )
    completion = int(generated.shape[1] - prompt.shape[1])
    expected = (
        prompt.shape[1] * offer.prompt_millicredits_per_1k
        + completion * offer.completion_millicredits_per_1k
    ) / 1000
    assert answer.text.strip()
    assert abs(spent - expected) <= 0.01 * expected, (spent, expected, answer.usage)
    assert earned == spent

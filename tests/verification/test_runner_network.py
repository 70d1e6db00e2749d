"""One check through a real coordinator and a real (fake-engine) worker: the job is pinned
to the node, authorized and paid like a user's, and judged from its last chunk."""

from __future__ import annotations

import random
from pathlib import Path

from troop_client.sdk import TroopClient
from troop_common.keys import Identity
from troop_verifier.jobs import VerificationJob
from troop_verifier.judging import Outcome
from troop_verifier.runner import Verifier
from troop_verifier.scoring import FakeScorer

MODEL = "smollm2-135m-instruct"
JOB = VerificationJob((("user", "please tell me about the tides of the sea"),), 32, 0.0, 1.0, None)


async def test_a_check_is_pinned_to_its_node_and_paid_like_a_users_job(
    start_mesh, tmp_path: Path, eventually
) -> None:
    async with start_mesh() as mesh:
        user = Identity.load_or_create(tmp_path / "verifier-user.key")
        async with TroopClient(mesh.coordinator, user) as client:
            await client.join()
            [node] = await client.nodes(MODEL)
            verifier = Verifier(
                [client], FakeScorer([MODEL]), Identity.generate(), rng=random.Random(1),
                submit=False,
            )  # fmt: skip
            check = await verifier.check_once(node, MODEL, JOB)
            assert check.job_id and check.node_id == node.node_id
            assert check.text == "You said: please tell me about the tides of the sea"
            if check.evidence:  # a worker that sends output evidence: the echo model's
                assert check.finding.outcome == Outcome.PASSED, check.finding
            else:  # no evidence on a finished stream is a failed check, never a pass
                assert check.finding.outcome == Outcome.FAILED
                assert "without output evidence" in check.finding.reason
            job = await client.job(check.job_id)
            assert job.node_id == node.node_id

            async def charged() -> bool:
                await client.drain_reports(2.0)
                return (await client.job(check.job_id)).charged_millicredits > 0

            await eventually(charged, timeout_s=20)

"""`troop verifier`: build the verifier from its settings and run it until signalled."""

from __future__ import annotations

import asyncio
import logging

from troop_common.keys import Identity
from troop_common.shutdown import until_signalled
from troop_verifier.identities import IdentityPool
from troop_verifier.jobs import load_prompts
from troop_verifier.runner import Verifier
from troop_verifier.scoring import FakeScorer, Scorer, TorchScorer
from troop_verifier.settings import VerifierSettings

log = logging.getLogger("troop.verifier")


def verifier_key(settings: VerifierSettings) -> Identity:
    """The verifier's signing key, created on first use."""
    settings.key_path.parent.mkdir(parents=True, exist_ok=True)
    return Identity.load_or_create(settings.key_path)


def build_scorer(settings: VerifierSettings) -> Scorer:
    if settings.engine == "fake":
        return FakeScorer([settings.client.model])
    return TorchScorer(settings.client.model, model_path=settings.model_path)


async def serve(settings: VerifierSettings) -> int:
    """Join the user identities, load the trusted model, check nodes until a signal."""
    key = verifier_key(settings)
    prompts = load_prompts(settings.prompts)
    scorer = build_scorer(settings)
    if isinstance(scorer, TorchScorer):
        await asyncio.to_thread(scorer.load)
    pool = IdentityPool(settings)
    try:
        verifier = Verifier(
            await pool.open(), scorer, key, prompts=prompts, interval_s=settings.interval_s,
            renew=pool.renew, identity_checks=settings.identity_checks,
        )  # fmt: skip
        log.info(
            "verifier %s checking %s every %.0f s per node on average",
            key.public_key_hex, settings.client.model, settings.interval_s,
        )  # fmt: skip
        async with until_signalled() as stopping:
            stop = asyncio.Event()
            runner = asyncio.ensure_future(verifier.run(stop))
            ending = await stopping.wait(runner)
            stop.set()
            await asyncio.gather(runner, return_exceptions=True)
    finally:
        await pool.close()
    return ending.exit_code

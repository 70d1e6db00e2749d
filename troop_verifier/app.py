"""`troop verifier`: build the verifier from its settings and run it until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from troop_client.reports import reports_outbox
from troop_client.sdk import TroopClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.shutdown import until_signalled
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
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for n in range(settings.identities):
            path = settings.identity_path(n)
            path.parent.mkdir(parents=True, exist_ok=True)
            identity = Identity.load_or_create(path)
            client = TroopClient(
                settings.client.coordinator, identity, settings.client,
                outbox=reports_outbox(settings.client, identity),
            )  # fmt: skip
            await stack.enter_async_context(client)
            try:
                await client.join()
            except TroopError as exc:
                log.warning("identity %d could not join: %s", n, exc.message)
            clients.append(client)
        verifier = Verifier(clients, scorer, key, prompts=prompts, interval_s=settings.interval_s)
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
    return ending.exit_code

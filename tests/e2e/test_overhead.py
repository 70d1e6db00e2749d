"""The SDK says what the protocol cost before the first token, on the answer itself."""

from __future__ import annotations

from troop_client import ChatOptions, Message, TroopClient
from troop_common.keys import Identity


async def test_the_first_chunk_and_the_completion_carry_the_overhead(network) -> None:
    async with TroopClient(network.coordinator, Identity.generate()) as user:
        chunks = [chunk async for chunk in user.chat([Message("user", "one two three")])]
        completion = await user.complete(
            [Message("user", "four five")], options=ChatOptions(max_tokens=8)
        )
    first, *rest = chunks
    assert first.overhead is not None and all(c.overhead is None for c in rest)
    for overhead in (first.overhead, completion.overhead):
        assert overhead is not None
        # The worker's own share came in its headers; the client's is Authorize and the rest.
        assert overhead.worker_ms is not None and overhead.worker_ms >= 0
        assert overhead.client_ms >= 0 and overhead.waited_ms >= 0
        assert overhead.total_ms == overhead.client_ms + overhead.worker_ms

"""The client host's program: `python -m tests.hosts.chat WORDS` asks for one chat answer
with the SDK (its settings from TROOP_* variables: coordinator, TLS roots, config dir with
the user's identity, keepalive) and prints each chunk as it arrives, one JSON object a
line (job_id, text, finish, t: the wall clock's time), then `{"answer": ...}` with the
whole text; its usage reports (countersignatures) leave before it exits. The test reads
that output to know how far the answer got and which job streams it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from troop_client import ChatOptions, ClientSettings, Message, TroopClient


async def main(words: str) -> None:
    settings = ClientSettings.from_env(os.environ)
    async with TroopClient.from_settings(settings) as client:
        parts = []
        options = ChatOptions(temperature=0.0, max_tokens=1000)
        async for chunk in client.chat([Message("user", words)], options=options):
            parts.append(chunk.text)
            line = {
                "job_id": chunk.job_id,
                "text": chunk.text,
                "finish": chunk.finish_reason,
                "t": time.time(),
            }
            print(json.dumps(line), flush=True)
        print(json.dumps({"answer": "".join(parts)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

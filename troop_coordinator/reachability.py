"""Before a node is listed, its advertised endpoint must answer with its node key.

`EndpointProofs.check(node, on_proven)` runs at most one proof per node at a
time, in the background (a heartbeat never waits on a dial), and tries an
unproven (node, endpoint) again only after `retry_s`, so a flood of
heartbeats naming dead or foreign endpoints costs one dial each per
`retry_s`. A proof dials the endpoint in the mode the node declared (TLS or
plaintext, as clients will: `TlsSettings.dial`, so a node lying about it fails),
asks for a signature of a fresh nonce (troop_common.endpoint_proof) and
checks it against the node key the heartbeat was asserted with. On success
`on_proven` records it (the node directory keeps the proven endpoint, and
the node joins discovery at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import grpc

from troop_common.endpoint_proof import verify_endpoint
from troop_common.errors import AuthError, FailedPrecondition
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_common.tls import TlsSettings
from troop_coordinator.registry import LiveNode

log = logging.getLogger("troop.coordinator.reachability")

PROOF_TIMEOUT_S = 3.0
RETRY_S = 15.0
# At most this many proofs dial at once (each holds a channel for up to the timeout).
CONCURRENT_PROOFS = 16

OnProven = Callable[[LiveNode], Awaitable[None]]


class EndpointProofs:
    def __init__(
        self,
        tls: TlsSettings,
        *,
        timeout_s: float = PROOF_TIMEOUT_S,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tls = tls
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_try: dict[tuple[str, str, str, bool], float] = {}
        self._slots = asyncio.Semaphore(CONCURRENT_PROOFS)

    def check(self, node: LiveNode, on_proven: OnProven) -> None:
        """Prove `node`'s endpoint in the background, unless one runs or ran lately."""
        key = (node.node_id, node.node_public_key, node.endpoint, node.tls)
        now = self._clock()
        if node.node_id in self._running or now - self._last_try.get(key, -1e18) < self.retry_s:
            return
        self._last_try = {k: t for k, t in self._last_try.items() if now - t < self.retry_s}
        self._last_try[key] = now
        task = asyncio.get_running_loop().create_task(self._prove_then(node, on_proven))
        self._running[node.node_id] = task
        task.add_done_callback(lambda _: self._running.pop(node.node_id, None))

    async def _prove_then(self, node: LiveNode, on_proven: OnProven) -> None:
        try:
            if await self.prove(node.endpoint, node.node_public_key, node.tls):
                await on_proven(node)
        except Exception:  # a failed record must not go unnoticed, nor kill the loop
            log.exception("recording the endpoint proof of node %s failed", node.node_id)

    async def prove(self, endpoint: str, node_public_key: str, tls: bool) -> bool:
        """True if `endpoint`, dialled with TLS or not as `tls` says, answered a fresh
        nonce with `node_public_key`'s signature."""
        nonce = secrets.token_hex(16)
        async with self._slots:
            try:
                channel = self._tls.dial(endpoint, tls)
            except FailedPrecondition as exc:  # plaintext off loopback, not allowed here
                log.info("endpoint %s not dialled: %s", endpoint, exc)
                return False
            try:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                reply = await stub.ProveEndpoint(
                    inference_pb2.ProveEndpointRequest(nonce=nonce, endpoint=endpoint),
                    timeout=self.timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                log.info("endpoint %s did not prove a node key: %s", endpoint, exc.code().name)
                return False
            finally:
                await channel.close()
        try:
            if reply.node_public_key != node_public_key:
                raise AuthError("another node key answers there")
            verify_endpoint(node_public_key, endpoint, nonce, reply.signature)
        except (AuthError, ValueError) as exc:
            log.warning("endpoint %s refused for node key %s: %s", endpoint, node_public_key, exc)
            return False
        return True

    async def close(self) -> None:
        """Let proofs in flight finish (each is bounded by the dial's timeout), so none is
        cancelled half-way through recording its result; cancel what still runs then."""
        tasks = list(self._running.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.timeout_s + 1.0)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

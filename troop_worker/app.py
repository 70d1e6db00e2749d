"""Wiring and lifecycle: `Worker` (async context manager), `serve()` and `main()`.

Start: load the engine (once), load the node identity, fetch the
coordinator's ticket keys (retrying until it answers or
`coordinator_wait_s` passes), start the gRPC server, send the first
heartbeat, keep heartbeating. Stop (SIGTERM/SIGINT): health NOT_SERVING,
stop heartbeats, let running streams finish within the grace period, flush
receipts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import partial

from troop_common.audit import AuditLog
from troop_common.coordinator_client import CoordinatorClient
from troop_common.entrypoint import run_until_done
from troop_common.errors import TroopError, Unavailable
from troop_common.health import health_problem
from troop_common.interceptors.ratelimit import RateLimitInterceptor, parse_rules
from troop_common.metrics import Metrics, MetricsEndpoint
from troop_common.proto import INFERENCE_SERVICE, coordinator_pb2, inference_pb2_grpc
from troop_common.ratelimit import MemoryRateLimiter
from troop_common.resilience import NO_RETRY, RetryPolicy
from troop_common.server import TroopServer
from troop_common.shutdown import until_signalled
from troop_worker.auth import TicketInterceptor
from troop_worker.engine import Engine, make_engine
from troop_worker.hardware import detect_hardware
from troop_worker.hardware_proof import prove_hardware
from troop_worker.heartbeat import Heartbeater
from troop_worker.identity import NodeIdentity, load_node_identity
from troop_worker.limits import JobLimiter
from troop_worker.receipts import ReceiptSender
from troop_worker.service import InferenceServicer
from troop_worker.settings import WorkerSettings
from troop_worker.tickets import KeyCache, TicketVerifier
from troop_worker.used_tickets import UsedTickets

log = logging.getLogger("troop.worker")


# The first key fetch waits for a coordinator that may be starting alongside: it tries
# again soon at first, then at most every 5 s.
KEY_FETCH_RETRY = RetryPolicy(base_delay_s=0.2, max_delay_s=5.0)


async def fetch_keys_until_ready(keys: KeyCache, deadline_s: float) -> None:
    """Fetch the key set, retrying with backoff until the coordinator answers."""
    give_up = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            await keys.refresh()
            return
        except TroopError as exc:
            delay = KEY_FETCH_RETRY.delay(attempt)
            attempt += 1
            if time.monotonic() + delay > give_up:
                raise Unavailable(
                    f"the coordinator did not hand out its ticket keys within {deadline_s:.0f} s: "
                    f"{exc}"
                ) from exc
            log.warning("waiting for the coordinator (%s)", exc)
            await asyncio.sleep(delay)


class Worker:
    """`async with Worker(settings, engine=...) as w:` serves on `w.address` until exit."""

    def __init__(self, settings: WorkerSettings, *, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else make_engine(settings)
        self._owns_engine = engine is None  # an engine handed in is the caller's to close
        self.identity: NodeIdentity | None = None
        self.server: TroopServer | None = None
        self.heartbeats: Heartbeater | None = None
        self.key_cache: KeyCache | None = None
        self.limiter = JobLimiter(
            settings.max_concurrent_jobs, settings.max_jobs_per_user, settings.max_queued_jobs
        )
        self._client: CoordinatorClient | None = None
        self._receipts: ReceiptSender | None = None
        self.proof: asyncio.Task[None] | None = None
        self.reachability: asyncio.Task[str | None] | None = None
        self.used_tickets: UsedTickets | None = None
        self.metrics = self._metrics()
        self.metrics_endpoint: MetricsEndpoint | None = None

    def _metrics(self) -> Metrics:
        metrics = Metrics("worker")
        limiter, engine = self.limiter, self.engine
        metrics.gauge_of("troop_worker_running_jobs", "jobs admitted", lambda: limiter.active)
        metrics.gauge_of(
            "troop_worker_queue_depth",
            "jobs waiting: for a job slot, then for a batch row",
            lambda: limiter.queued + int(getattr(engine, "queue_depth", 0)),
        )
        if hasattr(engine, "batch_size"):  # the torch engine's continuous batch
            metrics.gauge_of(
                "troop_worker_batch_size",
                "sequences in the running batch",
                lambda: engine.batch_size,
            )
        return metrics

    @property
    def address(self) -> str:
        """host:port the server is bound to."""
        if self.server is None:
            raise RuntimeError("the worker is not started")
        return self.server.address

    @property
    def advertise(self) -> str:
        return self.settings.advertise or self.address

    @property
    def node_id(self) -> str:
        if self.identity is None:
            raise RuntimeError("the worker is not started")
        return self.identity.node_id

    @property
    def receipts(self) -> ReceiptSender:
        """The sender of this worker's receipts (its `submitted` counts every job's)."""
        if self._receipts is None:
            raise RuntimeError("the worker is not started")
        return self._receipts

    async def start(self) -> None:
        settings = self.settings
        self.identity = identity = load_node_identity(settings)
        # No retries inside the client: heartbeats, the key fetch and receipts each
        # have their own loop, and retries inside them would multiply.
        resilience = settings.resilience
        self._client = client = CoordinatorClient(
            settings.coordinator,
            identity.key,
            tls=settings.tls,
            retry=NO_RETRY,
            timeout_s=resilience.request_timeout_s,
            connect_timeout_s=resilience.connect_timeout_s,
        )
        try:
            await self.engine.load()
            self.key_cache = KeyCache(client.get_key_set, max_age_s=settings.key_refresh_s)
            await fetch_keys_until_ready(self.key_cache, settings.coordinator_wait_s)
            # Used tickets survive a restart (until they expire): no replay after one.
            self.used_tickets = await UsedTickets.open(settings.data_dir / "used-tickets.jsonl")
            verifier = TicketVerifier(
                self.key_cache,
                node_id=identity.node_id,
                node_key=identity.public_key_hex,
                replay=self.used_tickets,
            )
            # Receipts wait on disk until the coordinator answers: none is lost to an
            # outage or a restart; what an earlier run left goes first.
            self._receipts = ReceiptSender(
                client,
                identity.key,
                identity.node_id,
                outbox=settings.data_dir / "receipts-outbox",
                backoff_s=settings.receipt_backoff_s,
            )
            self._receipts.resume()
            servicer = InferenceServicer(
                self.engine,
                verifier=verifier,
                limiter=self.limiter,
                receipts=self._receipts,
                max_new_tokens=settings.max_new_tokens,
                node=identity.key,
                metrics=self.metrics,
            )
            self.server = TroopServer(
                registrars=[
                    partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer)
                ],
                service_names=[INFERENCE_SERVICE],
                # After errors, tracing and audit: the ticket, then per-user limits.
                interceptors=[
                    TicketInterceptor(verifier),
                    RateLimitInterceptor(
                        MemoryRateLimiter(),
                        parse_rules(settings.rate_limits),
                        INFERENCE_SERVICE,
                        metrics=self.metrics,
                    ),
                ],
                bind=f"{settings.host}:{settings.port}",
                credentials=settings.tls.server_credentials(f"{settings.host}:{settings.port}"),
                audit=AuditLog(settings.audit_dir or settings.data_dir / "audit", "worker"),
                metrics=self.metrics,
            )
            self.metrics_endpoint = self.metrics.serve(settings.metrics_host, settings.metrics_port)
            await self.server.start()
        except BaseException:
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
                self.metrics_endpoint = None
            await client.close()
            if self.used_tickets is not None:
                await self.used_tickets.close()
            if self._owns_engine:
                await self.engine.close()
            raise
        self.heartbeats = Heartbeater(
            client,
            self._heartbeat_request,
            settings.heartbeat_interval_s,
            breaker=resilience.breaker(f"the coordinator at {settings.coordinator}"),
            request_timeout_s=resilience.request_timeout_s,
        )
        self.heartbeats.start()
        if settings.benchmark:
            self.proof = asyncio.get_running_loop().create_task(self._prove(), name="proof")
        if settings.advertise and settings.advertise != self.address:
            self.reachability = asyncio.get_running_loop().create_task(
                self._check_advertised(settings.advertise), name="reachability"
            )
        log.info(
            "worker %s serving %s on %s (advertised as %s), coordinator %s",
            identity.node_id, ", ".join(self.engine.models), self.address, self.advertise,
            settings.coordinator,
        )  # fmt: skip

    async def _prove(self) -> None:
        # The coordinator only challenges nodes it has heard from.
        assert self.heartbeats is not None and self._client is not None
        await self.heartbeats.first_success.wait()
        try:
            await prove_hardware(self._client, self.node_id)
        except Exception:
            log.exception("hardware proof failed; the node keeps its current multiplier")

    async def _check_advertised(self, advertise: str) -> str | None:
        """Dial the advertised endpoint as a client would; warn when it does not reach a
        serving worker. Only a warning: from inside a NAT the check can fail where
        clients outside succeed. Returns the problem, or None."""
        tls = self.settings.tls
        try:
            connect_timeout_s = self.settings.resilience.connect_timeout_s
            async with tls.dial(advertise, tls.serves_tls, connect_timeout_s) as channel:
                problem = await health_problem(channel, timeout_s=5.0)
        except TroopError as exc:  # plaintext off loopback: no client will dial it either
            problem = exc.message
        if problem is not None:
            log.warning(
                "clients may not reach this node: the advertised endpoint %s does not answer "
                "from here (%s); check --advertise / TROOP_WORKER_ADVERTISE",
                advertise, problem,
            )  # fmt: skip
        return problem

    def _heartbeat_request(self) -> coordinator_pb2.HeartbeatRequest:
        assert self.identity is not None
        return coordinator_pb2.HeartbeatRequest(
            node_id=self.identity.node_id,
            endpoint=self.advertise,
            models=list(self.engine.models),
            load=coordinator_pb2.NodeLoad(
                active_jobs=self.limiter.active,
                queue_depth=self.limiter.queued + int(getattr(self.engine, "queue_depth", 0)),
                max_concurrent_jobs=self.limiter.max_jobs,
            ),
            hardware=detect_hardware(str(getattr(self.engine, "device_name", "cpu"))),
            owner_public_key=self.identity.owner_public_key,
            invite_code=self.settings.invite_code,
            tls=self.settings.tls.serves_tls,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, stop heartbeats, drain streams within `grace_s`, flush receipts."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self.server is not None:
            await self.server.set_serving(False)
        for task in (self.proof, self.reachability):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.heartbeats is not None:
            await self.heartbeats.stop()
        if self.server is not None:
            await self.server.stop(grace)
        if self._receipts is not None:
            await self._receipts.drain(grace)
        if self._client is not None:
            await self._client.close()
        if self.used_tickets is not None:
            await self.used_tickets.close()
        if self._owns_engine:
            await self.engine.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        log.info("worker stopped")

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    settings: WorkerSettings,
    *,
    engine: Engine | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a worker until SIGTERM or SIGINT; `ready` is set once it serves."""
    async with until_signalled() as stopping, Worker(settings, engine=engine):
        if ready is not None:
            ready.set()
        await stopping.wait()
        log.info("shutting down")


def main() -> None:
    """Entry point: settings from the environment, logs to stderr, run until signalled."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local file; never download
    run_until_done("troop worker", lambda: serve(WorkerSettings.from_env(os.environ)))

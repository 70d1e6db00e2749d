"""Start the coordinator: migrate, wire the parts, serve gRPC, sweep expired reservations.

    async with Coordinator(settings) as coordinator:   # tests: port 0 → coordinator.address
        ...

`serve(settings)` runs one until SIGTERM/SIGINT (health NOT_SERVING, then
stop with grace); `main()` is the console entry, the only place that reads
the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2

from troop_common.audit import AuditLog
from troop_common.audit_throttle import SecurityEventLimits
from troop_common.entrypoint import run_until_done
from troop_common.interceptors.ratelimit import RateLimitInterceptor, parse_rules
from troop_common.metrics import Metrics, MetricsEndpoint
from troop_common.private_files import private_dir
from troop_common.proto import COORDINATOR_SERVICE, coordinator_pb2_grpc
from troop_common.ratelimit import RateLimiter
from troop_common.replay import ReplaySet
from troop_common.server import TroopServer
from troop_common.shutdown import until_signalled
from troop_common.stores import RedisHealthMonitor
from troop_coordinator.admission import Admission
from troop_coordinator.audit_store import AuditStore
from troop_coordinator.auth import AuthInterceptor
from troop_coordinator.authorization import JobAuthorizer, JobLimits
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.heartbeats import Heartbeats
from troop_coordinator.metrics import CreditMetrics, LiveNodes, MeteredLedger
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.proof import ChallengeBook, ProofShape
from troop_coordinator.reachability import EndpointProofs
from troop_coordinator.receipts import Receipts
from troop_coordinator.redis_registry import RedisNodeRegistry
from troop_coordinator.registry import NodeRegistry
from troop_coordinator.service import CoordinatorServicer
from troop_coordinator.settings import CoordinatorSettings
from troop_coordinator.stores import build_stores
from troop_coordinator.ticket_keys import TicketKeyRing
from troop_coordinator.verdicts import Verdicts, VerificationPolicy

if TYPE_CHECKING:  # the edge extra (Envoy) is optional
    from troop_common.envoy import EnvoySidecar

log = logging.getLogger("troop.coordinator")

# Health of the shared Redis state, beside the service's own: NOT_SERVING while
# Redis is away (discovery and replay checks refuse; money is unaffected).
REDIS_HEALTH_SERVICE = f"{COORDINATOR_SERVICE}.redis"


class Coordinator:
    """One running coordinator: database, server and sweeper, started and stopped together."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        registry: NodeRegistry | None = None,
        replays: ReplaySet | None = None,
        limiter: RateLimiter | None = None,
        envoy: EnvoySidecar | None = None,
    ) -> None:
        """`envoy`: the REST face in front of it (`--http-port`), whose statistics its
        metrics endpoint re-exports."""
        self.settings = settings
        self.engine = create_engine(
            settings.effective_database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        sessions = session_factory(self.engine)
        self.metrics = Metrics("coordinator")
        self.metrics_endpoint: MetricsEndpoint | None = None
        if envoy is not None:  # the edge extra is installed: it runs
            from troop_common.envoy.stats import export_envoy_stats

            export_envoy_stats(self.metrics, envoy)
        self.ledger = MeteredLedger(
            sessions,
            starter_millicredits=settings.starter_millicredits,
            token_slack=settings.usage_token_slack,
            countersign_s=settings.countersign_s,
        )
        self.ledger.credits = CreditMetrics(self.metrics)
        self.nodes = NodeDirectory(sessions, settings.node_admission_policy())
        # Off only where every endpoint is trusted (tests of the ledger with no workers).
        self.endpoint_proofs = (
            EndpointProofs(settings.tls) if settings.verify_node_endpoints else None
        )
        self.audit_events = AuditStore(sessions)
        self.stores = build_stores(settings)
        self.registry = registry or self.stores.registry
        self.replays = replays or self.stores.replays
        # Built for the rate-limit interceptor (another issue) to take from here.
        self.limiter = limiter or self.stores.limiter
        self.server: TroopServer | None = None
        self.redis_health: RedisHealthMonitor | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port actually bound (the real port when settings.port is 0)."""
        if self.server is None:
            raise RuntimeError("the coordinator is not started")
        return self.server.address

    async def start(self) -> None:
        settings = self.settings
        # Only this user may read the ledger, the audit log and the keys: 0700 even
        # under a loose umask, and an older, looser data dir is tightened (a WARNING).
        private_dir(settings.data_dir)
        await migrate.upgrade(self.engine)
        # ticket-keys/ in data_dir, re-read every few seconds: `troop admin
        # rotate-ticket-key` takes effect without a restart (ticket_keys.py).
        signer = await asyncio.to_thread(
            TicketKeyRing.open,
            settings.ticket_keys_dir,
            legacy_key=settings.ticket_key_path,
            lifetime_s=settings.ticket_ttl_s,
            grace_s=settings.effective_ticket_key_grace_s,
            reload_s=settings.ticket_key_reload_s,
        )
        admission = Admission(self.ledger, mode=settings.admission, pow_bits=settings.pow_bits)
        servicer = CoordinatorServicer(
            ledger=self.ledger,
            nodes=self.nodes,
            registry=self.registry,
            signer=signer,
            admission=admission,
            authorizer=JobAuthorizer(
                ledger=self.ledger,
                registry=self.registry,
                signer=signer,
                catalog=settings.catalog(),
                admission=admission,
                limits=JobLimits(
                    max_open_jobs_per_user=settings.max_open_jobs_per_user,
                    settle_grace_s=settings.settle_grace_s,
                ),
            ),
            heartbeats=Heartbeats(
                self.nodes,
                self.registry,
                self.endpoint_proofs,
                hold_s=settings.verification_hold_s,
            ),
            receipts=Receipts(self.ledger, self.nodes),
            verdicts=Verdicts(
                self.ledger.db,
                self.nodes,
                self.registry,
                VerificationPolicy(
                    trusted_keys=frozenset(settings.verifier_keys),
                    hold_s=settings.verification_hold_s,
                    bar_after=settings.verification_bar_after,
                ),
            ),
            heartbeat_interval_s=settings.heartbeat_interval_s,
            challenges=ChallengeBook(
                self.stores.challenges,
                shape=ProofShape(
                    rows=settings.proof_rows,
                    cols=settings.proof_cols,
                    calibration_inner=settings.proof_calibration_inner,
                    min_inner=settings.proof_min_inner,
                    max_inner=settings.proof_max_inner,
                    target_s=settings.proof_target_s,
                ),
                reference_ms=settings.benchmark_reference_ms,
                ttl_s=settings.challenge_ttl_s,
                interval_s=settings.challenge_interval_s,
            ),
        )
        self.server = TroopServer(
            registrars=[
                lambda server: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(
                    servicer, server
                )
            ],
            service_names=[COORDINATOR_SERVICE],
            # After errors, tracing and audit (TroopServer's own, outermost):
            # who the caller is, then whether they may call this often.
            interceptors=[
                AuthInterceptor(self.replays),
                RateLimitInterceptor(
                    self.limiter,
                    parse_rules(settings.rate_limits),
                    COORDINATOR_SERVICE,
                    trusted_proxies=settings.trusted_proxies,
                    metrics=self.metrics,
                ),
            ],
            audit=AuditLog(
                settings.effective_audit_dir,
                "coordinator",
                security_sink=self.audit_events.append,
                # A flood of bad tokens adds a bounded number of rows (audit_throttle).
                security_limits=SecurityEventLimits(
                    per_source=settings.audit_events_per_source,
                    total=settings.audit_events_per_minute,
                ),
                trusted_proxies=settings.trusted_proxies,
            ),
            bind=settings.bind,
            credentials=settings.tls.server_credentials(settings.bind),
            metrics=self.metrics,
        )
        self.metrics.collector(LiveNodes(self.registry, asyncio.get_running_loop()))
        await self.server.start()
        self.metrics_endpoint = self.metrics.serve(settings.metrics_host, settings.metrics_port)
        if self.stores.redis is not None:
            self.redis_health = RedisHealthMonitor(
                self.stores.redis,
                self._redis_changed,
                interval_s=settings.redis_check_interval_s,
            )
            await self.redis_health.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="reservation-sweeper")
        log.info(
            "coordinator listening on %s (ledger: %s; liveness, replay, limits: %s)",
            self.address,
            self.engine.url.get_backend_name(),
            "redis" if self.stores.redis is not None else "in-process",
        )

    async def _redis_changed(self, healthy: bool) -> None:
        if not healthy and isinstance(self.registry, RedisNodeRegistry):
            self.registry.redis_down()  # discovery refuses now, not when its mirror ages
        if self.server is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.server.health.set(REDIS_HEALTH_SERVICE, status)

    async def sweep_once(self) -> int:
        """Settle receipts whose client did not countersign in time, return expired
        reservations, and release (or, for barred nodes, return) held earnings whose hold
        is over (docs/adr/0053); how many jobs were settled or expired."""
        now = datetime.now(UTC)
        overdue = await self.ledger.settle_overdue(now)
        if overdue:
            log.info("settled %d receipts without a countersignature", len(overdue))
        expired = await self.ledger.expire_stale(now)
        if expired:
            log.info("expired %d unsettled reservations", len(expired))
        held = await self.ledger.settle_held(now)
        if any(held.values()):
            log.info(
                "held earnings: %d released to owners, %d returned to users (barred nodes)",
                held["released"],
                held["refunded"],
            )
        return len(overdue) + len(expired)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception:  # a database hiccup must not end the sweeper
                log.exception("sweeping expired reservations failed")

    async def stop(self, grace: float | None = None) -> None:
        if self.redis_health is not None:
            await self.redis_health.stop()
            self.redis_health = None
            if self.server is not None:
                await self._redis_changed(False)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.endpoint_proofs is not None:
            await self.endpoint_proofs.close()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        await self.nodes.close()
        await self.stores.close()
        await _database_cleanups_done()
        await self.engine.dispose()

    async def __aenter__(self) -> Coordinator:
        try:
            await self.start()
        except BaseException:
            await self.stop(0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _database_cleanups_done(timeout_s: float = 2.0) -> None:
    """Wait for the connection clean-ups that cancelled calls left behind.

    A call cancelled half-way through a transaction (a client that went away, or
    the server stopping) leaves SQLAlchemy a task that rolls back and closes its
    connection; disposing of the engine under it can leave that task waiting
    forever, and with it whoever closes the event loop."""
    current = asyncio.current_task()
    cleanups = [
        task
        for task in asyncio.all_tasks()
        if task is not current and "graceful_close" in getattr(task.get_coro(), "__qualname__", "")
    ]
    if cleanups:
        await asyncio.wait(cleanups, timeout=timeout_s)


async def serve(
    settings: CoordinatorSettings,
    *,
    ready: asyncio.Event | None = None,
    envoy: EnvoySidecar | None = None,
) -> None:
    """Run a coordinator until SIGTERM or SIGINT; `Coordinator.stop` is the stop steps.
    `envoy`: its REST face, if one runs (its statistics join the coordinator's metrics)."""
    async with until_signalled() as stopping, Coordinator(settings, envoy=envoy) as coordinator:
        if ready is not None:
            ready.set()
        await stopping.wait()
        log.info("coordinator on %s stopping", coordinator.address)


def main() -> None:
    """Console entry: settings from the environment, logs to stderr."""
    run_until_done("troop coordinator", lambda: serve(CoordinatorSettings.from_env(os.environ)))

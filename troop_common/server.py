"""Build a Troop gRPC server: interceptors in one visible order, health and reflection."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from troop_common.audit import AuditLog
from troop_common.errors import InvalidArgument, TroopError
from troop_common.interceptors.audit import AuditInterceptor
from troop_common.interceptors.errors import ErrorInterceptor
from troop_common.interceptors.tracing import TracingInterceptor
from troop_common.metrics import Metrics
from troop_common.resilience import ping_tolerance_options

Registrar = Callable[[grpc.aio.Server], None]


class TroopServer:
    """A grpc.aio server with its health servicer; `async with` starts and stops it."""

    def __init__(
        self,
        *,
        registrars: Iterable[Registrar],
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        bind: str = "127.0.0.1:0",
        credentials: grpc.ServerCredentials | None = None,
        audit: AuditLog | None = None,
        malformed: Callable[[InvalidArgument], TroopError] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # The order, outermost first, written once for every Troop server:
        #   errors   map whatever the inner ones raise to a status (and add trace trailers);
        #            a request that is not its method's protobuf is INVALID_ARGUMENT (`malformed`)
        #   metrics  every call counted by method and code, timed (a stream: to its first
        #            message too), refusals of the inner ones included
        #   tracing  request id in, request id and server time out
        #   audit    one line per call, refusals included
        #   ...      the server's own: authentication, then rate limits
        chain: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(malformed)]
        if metrics is not None:
            chain.append(metrics.interceptor())
        chain.append(TracingInterceptor())
        if audit is not None:
            chain.append(AuditInterceptor(audit))
        self.audit = audit
        # Clients' keepalive pings are welcome while a call is open (troop_common.resilience).
        self.server = grpc.aio.server(
            interceptors=[*chain, *interceptors], options=ping_tolerance_options()
        )
        for register in registrars:
            register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        if credentials is None:
            self.port = self.server.add_insecure_port(bind)
        else:
            self.port = self.server.add_secure_port(bind, credentials)
        if self.port == 0:
            raise OSError(f"could not bind {bind}")
        host = bind.rsplit(":", 1)[0]
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 2.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
        if self.audit is not None:
            await self.audit.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def __aenter__(self) -> TroopServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

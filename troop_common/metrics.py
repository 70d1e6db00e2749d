"""Prometheus metrics: one registry per component, its HTTP endpoint, and the RPC interceptor.

    metrics = Metrics("worker")                    # every component has one, always counting
    TroopServer(..., metrics=metrics)             # RPCs by method and code, latency, TTFM
    endpoint = metrics.serve("127.0.0.1", 9464)    # http://127.0.0.1:9464/metrics (0: None)
    ...
    endpoint.close()

A `Metrics` owns its own `CollectorRegistry` (not prometheus_client's global one), so
several components in one process (the tests) keep their numbers apart; every series
carries a `component` label. The endpoint is prometheus_client's threaded HTTP server,
started only when a `metrics_port` is set, and stopped with the component
(docs/adr/0051-prometheus-metrics.md). A component that embeds Envoy `include`s Envoy's
own exposition, appended to each scrape (troop_common.envoy.stats, ADR 54): so the
endpoint always answers in the Prometheus text format (0.0.4), never OpenMetrics.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from troop_common.config import ConfigError, parse_int
from troop_common.errors import TroopError
from troop_common.interceptors.wrapping import Stream, Unary, WrappingInterceptor
from troop_common.settings_spec import setting

# Seconds: from a fast unary call on loopback to a long answer streamed by a slow node.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}
# Another exposition (Prometheus text format) to append to each scrape: its families'
# names disjoint from the registry's; empty when it has nothing (its source is down).
Exposition = Callable[[], bytes]


def _port(name: str, raw: str) -> int:
    port = parse_int(name, raw, 0)
    if port > 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), or 0 for no metrics endpoint")
    return port


def metrics_port_setting(env: str) -> Any:
    """A component's `metrics_port` declaration (its variable `env`, flag --metrics-port)."""
    return setting(
        0,
        env=env,
        flag="--metrics-port",
        parse=_port,
        help="serve Prometheus metrics at `http://HOST:PORT/metrics` (0: no endpoint); "
        "the deployment files scrape 9464",
    )


def metrics_host_setting(env: str) -> Any:
    """Where the metrics endpoint listens: loopback unless a public address is asked for."""
    return setting(
        "127.0.0.1",
        env=env,
        flag="--metrics-host",
        help="the metrics endpoint's address; `0.0.0.0` only where the scraper cannot reach "
        "loopback (a container) and the port is firewalled from the public",
    )


class Metrics:
    """A component's metrics: the RPC series every server has, the streaming series, and
    whatever the component adds with `counter`, `gauge`, `histogram` or `collector`."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry()
        self.included: list[Exposition] = []
        self.rpcs = self.counter(
            "troop_rpcs",
            "RPCs served, by service, method and gRPC code",
            "service",
            "method",
            "code",
        )
        self.rpc_seconds = self.histogram(
            "troop_rpc_duration_seconds",
            "RPC duration (a stream's: until its last message)",
            "service",
            "method",
        )
        self.first_message_seconds = self.histogram(
            "troop_rpc_first_message_seconds",
            "server-streaming RPCs: time to the first message",
            "service",
            "method",
        )
        self.active_streams = self.gauge(
            "troop_active_streams", "server-streaming RPCs in progress", "service", "method"
        )
        self.tokens = self.counter("troop_tokens_streamed", "completion tokens streamed", "model")
        self.first_token_seconds = self.histogram(
            "troop_time_to_first_token_seconds", "time from a request to its first token", "model"
        )

    def _labels(self, labels: Iterable[str]) -> list[str]:
        return ["component", *labels]

    def counter(self, name: str, doc: str, *labels: str) -> Labelled:
        """A counter with these labels besides `component` (already filled in)."""
        metric = Counter(name, doc, self._labels(labels), registry=self.registry)
        return Labelled(metric, self.component)

    def gauge(self, name: str, doc: str, *labels: str) -> Labelled:
        metric = Gauge(name, doc, self._labels(labels), registry=self.registry)
        return Labelled(metric, self.component)

    def histogram(self, name: str, doc: str, *labels: str) -> Labelled:
        metric = Histogram(
            name, doc, self._labels(labels), registry=self.registry, buckets=LATENCY_BUCKETS
        )
        return Labelled(metric, self.component)

    def collector(self, collector: Collector) -> None:
        """A collector read at each scrape (e.g. live nodes, asked of the registry)."""
        self.registry.register(collector)

    def gauge_of(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge whose value is `read()` at each scrape (queue depth, breaker state)."""
        self.gauge(name, doc).labels().set_function(read)

    def include(self, exposition: Exposition) -> None:
        """Append `exposition()` to each scrape (Envoy's statistics), after the registry's."""
        self.included.append(exposition)

    def exposition(self) -> bytes:
        """What a scrape returns: the included texts are read first (so a gauge about
        them, `troop_envoy_up`, describes this scrape), then the registry's is put first."""
        included = b"".join(read() for read in self.included)
        return generate_latest(self.registry) + included

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)

    def serve(self, host: str, port: int) -> MetricsEndpoint | None:
        """`/metrics` on host:port, until its `close()`; None when `port` is 0 (off)."""
        return MetricsEndpoint(self.exposition, host, port) if port else None


class Labelled:
    """A metric whose `component` label is already filled in: `labels(...)` takes the rest."""

    def __init__(self, metric: Counter | Gauge | Histogram, component: str) -> None:
        self._metric = metric
        self._component = component

    def labels(self, *values: str) -> Any:
        return self._metric.labels(self._component, *values)


class MetricsEndpoint:
    """A threaded HTTP server answering every GET with `exposition()`; `close()` stops it."""

    def __init__(self, exposition: Exposition, host: str, port: int) -> None:
        try:
            server = make_server(
                host, port, _wsgi_app(exposition), _server_class(host, port), _QuietHandler
            )
        except OSError as exc:  # taken, or not an address of this machine
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port / --metrics-host"
            ) from None
        self._server: WSGIServer = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()
        self.port: int = server.server_address[1]
        self.url = f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def _server_class(host: str, port: int) -> type[WSGIServer]:
    """ThreadingWSGIServer for `host`'s address family (an IPv6 address binds AF_INET6)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family[0][0]})


def _wsgi_app(exposition: Exposition) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = exposition()
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
        )
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return app


def _code(exc: BaseException | None) -> str:
    if exc is None:
        return grpc.StatusCode.OK.name
    if isinstance(exc, TroopError):
        return exc.code.name
    if not isinstance(exc, Exception):  # cancelled: the caller went away
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.INTERNAL.name


def _split(method: str) -> tuple[str, str]:
    """'/troop.v1.CoordinatorService/Authorize' → ('troop.v1.CoordinatorService', 'Authorize')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MetricsInterceptor(WrappingInterceptor):
    """Counts every call by service, method and code; times it (a stream: whole and to its
    first message) and keeps the number of streams in progress."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def _done(self, method: str, started: float, exc: BaseException | None) -> None:
        service, name = _split(method)
        self._m.rpcs.labels(service, name, _code(exc)).inc()
        self._m.rpc_seconds.labels(service, name).observe(time.perf_counter() - started)

    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                result = await behaviour(request, context)
            except BaseException as exc:
                self._done(method, started, exc)
                raise
            self._done(method, started, None)
            return result

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            service, name = _split(method)
            active = self._m.active_streams.labels(service, name)
            active.inc()
            first = True
            try:
                async for message in behaviour(request, context):
                    if first:
                        first = False
                        self._m.first_message_seconds.labels(service, name).observe(
                            time.perf_counter() - started
                        )
                    yield message
            except BaseException as exc:
                self._done(method, started, exc)
                raise
            finally:
                active.dec()
            self._done(method, started, None)

        return call

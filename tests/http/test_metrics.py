"""Prometheus metrics: the coordinator, the worker and the client sidecar each serve
`/metrics` on their `--metrics-port`; one streamed chat through the OpenAI face shows up
in all three, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.http.conftest import MODEL
from troop_client.sidecar import SidecarSettings
from troop_common.config import ConfigError
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import RateLimited
from troop_common.metrics import Metrics
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.settings import WorkerSettings

QUESTION = [{"role": "user", "content": "count the tokens of this answer please"}]
COORDINATOR = "troop.v1.CoordinatorService"
INFERENCE = "troop.v1.InferenceService"
OPENAI = "troop.v1.OpenAIService"
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _family(name: str) -> str:
    """A sample's or a family's name, without the suffix the exposition format adds."""
    for suffix in SAMPLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exported(text: str) -> set[str]:
    return {_family(f.name) for f in text_string_to_metric_families(text)}


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        node = list(node.values())
    return [s for item in node for s in _strings(item)] if isinstance(node, list) else []


# What names labels, not metrics: matchers and legends `{...}`, groupings `by (...)`.
LABEL_PLACES = re.compile(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)")


def dashboard_metrics() -> dict[str, set[str]]:
    """Each dashboard's troop_* and envoy_* metrics, from its panels' queries and variables."""
    found = {}
    for board in sorted(DASHBOARDS.glob("*.json")):
        strings = _strings(json.loads(board.read_text()))  # every string in it, queries too
        text = "\n".join(LABEL_PLACES.sub(" ", s) for s in strings)
        found[board.name] = {_family(m) for m in re.findall(r"\b(?:troop|envoy)_[a-z_]+", text)}
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name` whose labels include `labels`; None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def scrape(port: int) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return response.text


async def test_one_streamed_chat_is_counted_by_every_component(
    start_mesh, start_sidecar, eventually
) -> None:
    ports = {"coordinator": free_port(), "worker": free_port(), "sidecar": free_port()}
    async with (
        start_mesh(
            coordinator_overrides={"metrics_port": ports["coordinator"]},
            metrics_port=ports["worker"],
        ) as mesh,
        start_sidecar(mesh, metrics_port=ports["sidecar"]) as sidecar,
    ):
        client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens > 0
        tokens = float(usage.completion_tokens)

        texts: dict[str, str] = {}

        async def all_recorded() -> bool:
            # The worker counts a job when its stream closes, just after the last chunk.
            for component, port in ports.items():
                texts[component] = await scrape(port)
            worker, coordinator = texts["worker"], texts["coordinator"]
            charged = sample(coordinator, "troop_credits_charged_millicredits_total") or 0
            counted = sample(worker, "troop_tokens_streamed_total", model=MODEL) == tokens
            return counted and charged > 0  # the receipt has reached the ledger

        await eventually(all_recorded, timeout_s=20)

    worker, sidecar_text, coordinator = texts["worker"], texts["sidecar"], texts["coordinator"]
    for text, component, service, method in [
        (worker, "worker", INFERENCE, "ChatCompletion"),
        (sidecar_text, "sidecar", OPENAI, "CreateChatCompletion"),
        (coordinator, "coordinator", COORDINATOR, "Authorize"),
    ]:
        ok = {"component": component, "service": service, "method": method, "code": "OK"}
        assert sample(text, "troop_rpcs_total", **ok) == 1, component
        timed = {"component": component, "service": service, "method": method}
        assert sample(text, "troop_rpc_duration_seconds_count", **timed) == 1, component
        if method != "Authorize":  # the streams: timed to their first message too
            first = sample(text, "troop_rpc_first_message_seconds_count", **timed)
            assert first == 1, component
    for text, component in [(worker, "worker"), (sidecar_text, "sidecar")]:
        labels = {"component": component, "model": MODEL}
        assert sample(text, "troop_tokens_streamed_total", **labels) == tokens, component
        ttft = sample(text, "troop_time_to_first_token_seconds_count", **labels)
        assert ttft == 1, component
        assert sample(text, "troop_time_to_first_token_seconds_sum", **labels) > 0
    assert sample(sidecar_text, "troop_openai_requests_total", route="/v1/chat/completions") == 1
    assert sample(sidecar_text, "troop_coordinator_breaker_state") == 0  # closed
    # The sidecar's Envoy (the OpenAI face) counted the request, on the sidecar's endpoint.
    face = {"envoy_http_conn_manager_prefix": "troop_client"}
    assert sample(sidecar_text, "envoy_http_downstream_rq_total", **face) >= 1
    assert sample(sidecar_text, "troop_envoy_up", component="sidecar") == 1
    assert sample(coordinator, "troop_live_nodes", model=MODEL) == 1
    reserved = sample(coordinator, "troop_credits_reserved_millicredits_total")
    charged = sample(coordinator, "troop_credits_charged_millicredits_total")
    refunded = sample(coordinator, "troop_credits_refunded_millicredits_total")
    assert reserved > 0 and charged > 0
    assert charged + refunded == reserved  # what was held is paid or given back
    assert sample(worker, "troop_worker_running_jobs") == 0
    assert sample(worker, "troop_active_streams", method="ChatCompletion") == 0

    # Every metric a Grafana panel asks for is one these components export (the fake
    # engine has no batch: the built-in engine's worker adds its batch size).
    from prometheus_client import generate_latest

    from troop_worker.engine.torch_engine import TorchEngine

    torch_worker = Worker(WorkerSettings(), engine=TorchEngine())
    names = set().union(*(exported(text) for text in texts.values()))
    names |= exported(generate_latest(torch_worker.metrics.registry).decode())
    boards = dashboard_metrics()
    assert set(boards) == {"ledger.json", "network.json", "node.json"}
    for board, wanted in boards.items():
        assert wanted and wanted <= names, (board, wanted - names)


async def test_rate_limit_refusals_are_counted_by_bucket(start_mesh) -> None:
    port = free_port()
    overrides = {"metrics_port": port, "rate_limits": "ListModels=1/3600@ip"}
    async with (
        start_mesh(coordinator_overrides=overrides) as mesh,
        CoordinatorClient(mesh.coordinator) as client,
    ):
        await client.list_models()
        with pytest.raises(RateLimited):
            await client.list_models()
        text = await scrape(port)
    assert sample(text, "troop_rate_limit_refusals_total", bucket="ListModels") == 1
    method = {"service": COORDINATOR, "method": "ListModels"}
    assert sample(text, "troop_rpcs_total", code="OK", **method) == 1
    assert sample(text, "troop_rpcs_total", code="RESOURCE_EXHAUSTED", **method) == 1


def test_no_endpoint_unless_a_port_is_given_and_loopback_unless_asked() -> None:
    for cls, prefix in [
        (CoordinatorSettings, "TROOP_COORDINATOR"),
        (WorkerSettings, "TROOP_WORKER"),
        (SidecarSettings, "TROOP_CLIENT"),
    ]:
        default = cls.from_env({})
        assert default.metrics_port == 0 and default.metrics_host == "127.0.0.1"
        with pytest.raises(ConfigError, match=f"{prefix}_METRICS_PORT must be a TCP port"):
            cls.from_env({f"{prefix}_METRICS_PORT": "70000"})


def test_a_taken_metrics_port_is_a_clear_error() -> None:
    metrics = Metrics("worker")
    endpoint = metrics.serve("127.0.0.1", free_port())
    assert endpoint is not None
    try:
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{endpoint.port}"):
            Metrics("coordinator").serve("127.0.0.1", endpoint.port)
    finally:
        endpoint.close()

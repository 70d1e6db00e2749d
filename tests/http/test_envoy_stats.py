"""Envoy's own statistics on its component's `/metrics`: the coordinator's REST face, read
from Envoy's admin socket at each scrape; a dead Envoy leaves the scrape valid."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections import Counter
from pathlib import Path

import httpx2 as httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.http.test_metrics import sample, scrape
from troop_common.envoy.stats import EnvoyStats, checked
from troop_coordinator.app import Coordinator
from troop_coordinator.http_face import coordinator_http_face
from troop_coordinator.settings import CoordinatorSettings


def assert_valid(text: str) -> set[str]:
    """The exposition parses, and no family is declared twice; its families' names."""
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    twice = [name for name, n in Counter(types).items() if n > 1]
    assert not twice, twice
    return {family.name for family in text_string_to_metric_families(text)}


async def test_the_coordinator_metrics_carry_its_envoy_stats_and_survive_its_death(
    tmp_path: Path, eventually
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    settings = dataclasses.replace(
        CoordinatorSettings.from_env({}),
        port=grpc_port,
        data_dir=tmp_path / "coordinator",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
        metrics_port=metrics_port,
    )
    async with (
        coordinator_http_face(f"127.0.0.1:{grpc_port}") as envoy,
        Coordinator(settings, envoy=envoy),
    ):
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            assert (await http.get("/v1/models")).status_code == 200
        text = await scrape(metrics_port)
        names = assert_valid(text)
        face = {"envoy_http_conn_manager_prefix": "troop_coordinator"}
        assert sample(text, "envoy_http_downstream_rq_total", **face) >= 1
        upstream = {"envoy_cluster_name": "grpc_upstream"}
        assert sample(text, "envoy_cluster_upstream_rq_total", **upstream) >= 1
        assert sample(text, "troop_envoy_up", component="coordinator") == 1
        assert "troop_rpcs" in names  # the coordinator's own, beside Envoy's

        assert envoy.process is not None
        os.kill(envoy.process.pid, signal.SIGKILL)
        await eventually(lambda: not envoy.running, timeout_s=10)
        text = await scrape(metrics_port)
        names = assert_valid(text)
        assert not [name for name in names if name.startswith("envoy_")]
        assert sample(text, "troop_envoy_up", component="coordinator") == 0
        assert sample(text, "troop_rpcs_total", method="ListModels", code="OK") == 1


def test_nothing_but_envoy_statistics_is_appended(tmp_path: Path) -> None:
    assert (
        checked(b'# TYPE envoy_x counter\nenvoy_x{a="b"} 1')
        == b'# TYPE envoy_x counter\nenvoy_x{a="b"} 1\n'
    )
    for bad in (b"# TYPE troop_rpcs counter\ntroop_rpcs 1\n", b"envoy_x{ 1\n", b"\xff"):
        try:
            checked(bad)
        except ValueError:
            continue
        raise AssertionError(bad)

    class Gone:  # an Envoy whose admin socket is there no more
        admin_path = tmp_path / "admin.sock"

    stats = EnvoyStats(Gone())  # type: ignore[arg-type]
    assert stats.exposition() == b"" and not stats.up

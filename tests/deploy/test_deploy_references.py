"""Everything the deployment files name exists: what the Dockerfiles copy and run, what the
compose files build and mount, the `troop` commands and flags they start, the TROOP_*
variables they set (each read by a component), and the scripts the CI workflow runs. Then
the promises ADR 45 makes of them: capped logs for every service, Redis's append-only file,
the worker's GPUs, the edge's address trusted as the replicas' proxy, Prometheus's jobs.
Each reference check also runs on a broken copy, which it must catch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_checks import (
    COMPOSE_FILES,
    DEPLOY,
    DOCKERFILES,
    ROOT,
    WORKFLOWS,
    dockerfile_instructions,
    load_yaml,
    missing_compose_paths,
    missing_copy_sources,
    missing_image_paths,
)
from troop_cli.main import build_parser

# Bind mounts whose files the operator brings (certificates): docs/deployment.md says how.
OPERATOR_FILES = {"./certs", "./certs/ca.crt"}
COORDINATOR_COMPOSE, WORKER_COMPOSE = COMPOSE_FILES


def _services(compose_file: Path) -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(compose_file)["services"]
    return services


def _troop_commands() -> list[list[str]]:
    """Every `troop …` argument list the images and compose files start."""
    commands = []
    for dockerfile in DOCKERFILES:
        entry = [shlex.split(a) for i, a in dockerfile_instructions(dockerfile) if i == "CMD"]
        commands += [[arg.strip('[]",') for arg in args] for args in entry]
    for compose_file in COMPOSE_FILES:
        for service in _services(compose_file).values():
            if str(service.get("image", "")).startswith("troop-") and "command" in service:
                commands.append(service["command"])
    return commands


def _unknown_troop_arguments(argv: list[str]) -> str | None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        return f"troop {' '.join(argv)}: exit {exc.code}"
    return None


def _troop_variables_set(text: str) -> set[str]:
    """TROOP_* names given a value: compose `environment` keys and Dockerfile ENV."""
    return set(re.findall(r"\b(TROOP_[A-Z0-9_]+)(?:\s*[:=])", text))


def _variables_read() -> str:
    return "\n".join(p.read_text() for p in ROOT.glob("troop_*/**/*.py"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_what_each_dockerfile_copies_and_runs_is_in_the_repository(dockerfile: Path) -> None:
    assert missing_copy_sources(dockerfile) == []
    assert missing_image_paths(dockerfile) == []


def test_a_copy_of_a_missing_path_is_caught(tmp_path: Path) -> None:
    text = DOCKERFILES[0].read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        text.replace("COPY migrations ./migrations", "COPY migration ./migrations").replace(
            "/app/deploy/healthcheck.py", "/app/deploy/health.py"
        )
    )
    assert missing_copy_sources(broken) == ["migration"]
    assert missing_image_paths(broken) == ["/app/deploy/health.py"]


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_what_each_compose_file_builds_and_mounts_is_in_the_repository(compose_file: Path) -> None:
    assert missing_compose_paths(compose_file, OPERATOR_FILES) == []


def test_a_mount_of_a_missing_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COORDINATOR_COMPOSE.read_text().replace("../envoy/edge.yaml", "../envoy/edges.yaml")
    broken.write_text(text.replace("dockerfile: deploy/coordinator/", "dockerfile: deploy/coord/"))
    missing = missing_compose_paths(broken, OPERATOR_FILES, base=COORDINATOR_COMPOSE.parent)
    assert missing == ["../../deploy/coord/Dockerfile", "../envoy/edges.yaml"]


def test_every_troop_command_they_start_exists_with_its_flags() -> None:
    commands = _troop_commands()
    assert ["coordinator", "--http-port", "8080"] in commands
    assert {c[0] for c in commands} == {"coordinator", "worker", "client"}
    assert [problem for c in commands if (problem := _unknown_troop_arguments(c))] == []


def test_an_unknown_flag_is_caught() -> None:
    assert _unknown_troop_arguments(["coordinator", "--http-prot", "8080"]) is not None


def test_every_troop_variable_they_set_is_one_a_component_reads() -> None:
    texts = [p.read_text() for p in [*DOCKERFILES, *COMPOSE_FILES]]
    names = set().union(*(_troop_variables_set(t) for t in texts))
    assert {"TROOP_DATABASE_URL", "TROOP_REDIS_URL", "TROOP_WORKER_ADVERTISE"} <= names
    read = _variables_read()
    assert sorted(n for n in names if f'"{n}"' not in read) == []


def test_a_misspelt_variable_is_caught() -> None:
    names = _troop_variables_set("    TROOP_REDIS_URI: redis://redis:6379/0\n")
    assert [n for n in names if f'"{n}"' not in _variables_read()] == ["TROOP_REDIS_URI"]


def _workflow_paths(workflow: Path) -> list[str]:
    """Repository paths the workflow's steps run or build from."""
    doc = load_yaml(workflow)
    paths = []
    for job in doc["jobs"].values():
        components = job.get("strategy", {}).get("matrix", {}).get("component", [None])
        for step in job["steps"]:
            paths += re.findall(r"(?:^|\s)((?:scripts|\.ci)/[\w.-]+)", step.get("run", ""))
            if dockerfile := step.get("with", {}).get("file"):
                paths += [dockerfile.replace("${{ matrix.component }}", c) for c in components]
    return paths


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_what_the_workflow_runs_is_in_the_repository(workflow: Path) -> None:
    paths = _workflow_paths(workflow)
    assert {"scripts/bootstrap", "scripts/check-contracts", ".ci/run"} <= set(paths)
    assert "deploy/worker/Dockerfile" in paths
    assert [p for p in paths if not (ROOT / p).is_file()] == []


def test_every_service_log_is_capped() -> None:
    for compose_file in COMPOSE_FILES:
        for name, service in _services(compose_file).items():
            logging = service.get("logging", {})
            assert logging.get("driver") == "json-file", name
            assert {"max-size", "max-file"} <= set(logging.get("options", {})), name


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = _services(COORDINATOR_COMPOSE)["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_two_coordinator_replicas_share_ticket_keys_behind_the_edge() -> None:
    services = _services(COORDINATOR_COMPOSE)
    replicas = [s for s in services if s.startswith("coordinator-")]
    assert replicas == ["coordinator-1", "coordinator-2"]
    mounts = [set(services[r]["volumes"]) for r in replicas]
    assert "coordinator-data:/var/lib/troop/coordinator" in mounts[0] & mounts[1]
    edge_address = services["edge"]["networks"]["edge"]["ipv4_address"]
    for replica in replicas:
        trusted = services[replica]["environment"]["TROOP_TRUSTED_PROXIES"].split(",")
        assert edge_address in trusted
    edge = (DEPLOY / "envoy" / "edge.yaml").read_text()
    assert all(f"address: {r}, port_value: 50051" in edge for r in replicas)


def test_the_worker_reserves_the_gpus() -> None:
    reservations = _services(WORKER_COMPOSE)["worker"]["deploy"]["resources"]["reservations"]
    assert reservations["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]


def test_prometheus_scrapes_every_component_and_grafana_reads_prometheus() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"coordinator", "worker", "sidecar", "envoy"}
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    assert [d["url"] for d in datasources["datasources"]] == ["http://prometheus:9090"]
    assert "prometheus" in _services(COORDINATOR_COMPOSE)


def test_caddy_proxies_to_where_headscale_and_the_sidecar_listen() -> None:
    caddyfile = (DEPLOY / "caddy" / "Caddyfile").read_text()
    headscale = load_yaml(DEPLOY / "headscale" / "config.yaml")
    assert f"reverse_proxy {headscale['listen_addr']}" in caddyfile
    assert "reverse_proxy 127.0.0.1:9000" in caddyfile  # `troop client`'s default port

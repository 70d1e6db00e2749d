"""Everything the deployment files name exists: what the Dockerfile copies and runs, a target
for each component, the targets the compose files and the workflow build, what the compose
files mount, the `troop` commands and flags they start, the TROOP_*
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
    DOCKERFILE,
    ROOT,
    RUNTIME_STAGE,
    TARGETS,
    WORKFLOWS,
    dockerfile_stages,
    load_yaml,
    missing_compose_paths,
    missing_compose_targets,
    missing_copy_sources,
    missing_image_paths,
    missing_targets,
    stage_base,
)
from troop_cli.main import build_parser

# Bind mounts whose files the operator brings (certificates): docs/deployment.md says how.
OPERATOR_FILES = {"./certs", "./certs/ca.crt"}
COORDINATOR_COMPOSE, WORKER_COMPOSE = COMPOSE_FILES


def _services(compose_file: Path) -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(compose_file)["services"]
    return services


def _troop_commands() -> list[list[str]]:
    """Every `troop …` argument list the images (each target's CMD) and compose files start."""
    commands = []
    stages = dockerfile_stages(DOCKERFILE)
    for target in TARGETS:
        entry = [shlex.split(a) for i, a in stages[target] if i == "CMD"]
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


def test_every_component_is_a_target_built_on_the_shared_runtime() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert missing_targets(DOCKERFILE, TARGETS) == []
    assert {target: stage_base(stages[target]) for target in TARGETS} == dict.fromkeys(
        TARGETS, RUNTIME_STAGE
    )
    # The user is set once, in the shared base, and no target changes it.
    assert ("USER", "10001:10001") in stages[RUNTIME_STAGE]
    assert [t for t in TARGETS if any(i == "USER" for i, _ in stages[t])] == []


def test_what_the_dockerfile_copies_and_runs_is_in_the_repository() -> None:
    assert missing_copy_sources(DOCKERFILE) == []
    assert missing_image_paths(DOCKERFILE) == []


def _broken_dockerfile(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = DOCKERFILE.read_text()
    for old, new in replacements:
        assert old in text, f"deploy/Dockerfile no longer holds {old!r}: update the broken copy"
        text = text.replace(old, new, 1)
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    return broken


def test_a_copy_of_a_missing_path_is_caught(tmp_path: Path) -> None:
    broken = _broken_dockerfile(
        tmp_path,
        ("COPY migrations ./migrations", "COPY migration ./migrations"),
        ("COPY deploy/healthcheck.py", "COPY deploy/health-check.py"),
        ("COPY --from=venv-engine /opt/venv", "COPY --from=venv-engines /opt/venv"),
        ('"/app/deploy/healthcheck.py", "worker"', '"/app/deploy/health.py", "worker"'),
    )
    assert missing_copy_sources(broken) == [
        "migration",
        "deploy/health-check.py",
        "--from=venv-engines",
    ]
    assert missing_image_paths(broken) == ["/app/deploy/health.py"]


def test_a_missing_target_is_caught(tmp_path: Path) -> None:
    broken = _broken_dockerfile(tmp_path, ("FROM runtime AS client", "FROM runtime AS sidecar"))
    assert missing_targets(broken, TARGETS) == ["client"]
    assert missing_targets(broken, ["sidecar"]) == []


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_what_each_compose_file_builds_and_mounts_is_in_the_repository(compose_file: Path) -> None:
    assert missing_compose_paths(compose_file, OPERATOR_FILES) == []


def test_a_mount_of_a_missing_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COORDINATOR_COMPOSE.read_text().replace("../envoy/edge.yaml", "../envoy/edges.yaml")
    broken.write_text(text.replace("dockerfile: deploy/Dockerfile", "dockerfile: deploy/Dockerfil"))
    missing = missing_compose_paths(broken, OPERATOR_FILES, base=COORDINATOR_COMPOSE.parent)
    assert missing == ["../../deploy/Dockerfil", "../envoy/edges.yaml"]


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_each_compose_file_builds_its_component_s_target(compose_file: Path) -> None:
    builds = [s["build"] for s in _services(compose_file).values() if "build" in s]
    assert {b["target"] for b in builds} == {compose_file.parent.name}
    assert {b["dockerfile"] for b in builds} == {"deploy/Dockerfile"}
    assert missing_compose_targets(compose_file) == []


def test_a_build_of_a_missing_target_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(WORKER_COMPOSE.read_text().replace("target: worker", "target: wroker"))
    assert missing_compose_targets(broken, base=WORKER_COMPOSE.parent) == ["worker: wroker"]


def test_every_troop_command_they_start_exists_with_its_flags() -> None:
    commands = _troop_commands()
    assert ["coordinator", "--http-port", "8080"] in commands
    assert {c[0] for c in commands} == {"coordinator", "worker", "client"}
    assert [problem for c in commands if (problem := _unknown_troop_arguments(c))] == []


def test_an_unknown_flag_is_caught() -> None:
    assert _unknown_troop_arguments(["coordinator", "--http-prot", "8080"]) is not None


def test_every_troop_variable_they_set_is_one_a_component_reads() -> None:
    texts = [p.read_text() for p in [DOCKERFILE, *COMPOSE_FILES]]
    names = set().union(*(_troop_variables_set(t) for t in texts))
    assert {"TROOP_DATABASE_URL", "TROOP_REDIS_URL", "TROOP_WORKER_ADVERTISE"} <= names
    read = _variables_read()
    assert sorted(n for n in names if f'"{n}"' not in read) == []


def test_a_misspelt_variable_is_caught() -> None:
    names = _troop_variables_set("    TROOP_REDIS_URI: redis://redis:6379/0\n")
    assert [n for n in names if f'"{n}"' not in _variables_read()] == ["TROOP_REDIS_URI"]


def _expand(value: str, components: list[str]) -> list[str]:
    return [value.replace("${{ matrix.component }}", c) for c in components]


def _workflow_paths(workflow: Path) -> list[str]:
    """Repository paths the workflow's steps run or build from."""
    paths = []
    for job in load_yaml(workflow)["jobs"].values():
        components = job.get("strategy", {}).get("matrix", {}).get("component", [""])
        for step in job["steps"]:
            paths += re.findall(r"(?:^|\s)((?:scripts|\.ci)/[\w.-]+)", step.get("run", ""))
            if dockerfile := step.get("with", {}).get("file"):
                paths += _expand(dockerfile, components)
    return paths


def _workflow_builds(workflow: Path) -> list[tuple[str, str]]:
    """(Dockerfile, target) for each image the workflow builds, one per matrix component."""
    builds = []
    for job in load_yaml(workflow)["jobs"].values():
        components = job.get("strategy", {}).get("matrix", {}).get("component", [""])
        for step in job["steps"]:
            given = step.get("with", {})
            if "file" in given:
                targets = _expand(given.get("target", ""), components)
                builds += list(zip(_expand(given["file"], components), targets, strict=True))
    return builds


def _missing_workflow_targets(workflow: Path) -> list[str]:
    return [t for f, t in _workflow_builds(workflow) if missing_targets(ROOT / f, [t])]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_what_the_workflow_runs_is_in_the_repository(workflow: Path) -> None:
    paths = _workflow_paths(workflow)
    assert {"scripts/bootstrap", "scripts/check-contracts", ".ci/run"} <= set(paths)
    assert "deploy/Dockerfile" in paths
    assert [p for p in paths if not (ROOT / p).is_file()] == []


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflow_builds_every_target(workflow: Path) -> None:
    builds = _workflow_builds(workflow)
    assert sorted(builds) == sorted(("deploy/Dockerfile", t) for t in TARGETS)
    assert _missing_workflow_targets(workflow) == []


def test_a_workflow_build_of_a_missing_target_is_caught(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    text = WORKFLOWS[0].read_text()
    old = "component: [coordinator, worker, client]"
    assert old in text, "the images job's matrix moved: update the broken copy"
    (workflows / "ci.yml").write_text(
        text.replace(old, "component: [coordinator, worker, sidecar]")
    )
    assert _missing_workflow_targets(workflows / "ci.yml") == ["sidecar"]


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

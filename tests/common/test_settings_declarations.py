"""Each setting is declared once (ADR 41): the README's tables, the `troop` flags, the
errors for bad values and the masking of secrets all come from the declarations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from troop_cli.main import build_parser
from troop_cli.settings_doc import README, rendered, tables
from troop_client.settings import ClientSettings
from troop_client.sidecar import SidecarSettings
from troop_common.config import ConfigError
from troop_common.settings_spec import Choice, Spec, declared, integer, number
from troop_common.tls import TlsSettings
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
ALL = [CoordinatorSettings, WorkerSettings, ClientSettings, SidecarSettings, TlsSettings]
# Options of a command that are not settings: what to run, not how a component is set up.
COMMAND_OPTIONS = {
    "coordinator": {"--http-port"},  # an Envoy beside the coordinator, run by the CLI
    "worker": {"--seconds", "--device"},  # `troop worker benchmark`
    "admin": set(),
    "client": set(),
}


def _specs(cls: type[Any]) -> list[tuple[str, Spec]]:
    return [(path, spec) for path, spec, _ in declared(cls)]


def test_the_readme_tables_are_what_the_declarations_render() -> None:
    readme = README.read_text()
    assert rendered(readme) == readme, "run python -m troop_cli.settings_doc"


def test_every_declared_variable_and_flag_has_a_readme_row() -> None:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for classes in tables().values():
        for cls in classes:
            for _, spec in _specs(cls):
                cell = f"`{spec.env}`" if spec.env else f"`{spec.flag}`"
                assert any(row.startswith(f"| {cell} ") or f"| {cell} |" in row for row in rows), (
                    f"{cls.__name__}: {spec.env or spec.flag} has no README row"
                )


def _help_flags(command: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "troop_cli", command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", result.stdout)) - {"--help"}


@pytest.mark.parametrize(
    ("command", "classes"),
    [
        ("coordinator", [CoordinatorSettings]),
        ("admin", [CoordinatorSettings]),
        ("worker", [WorkerSettings]),
        ("client", [SidecarSettings]),
    ],
)
def test_every_flag_of_a_component_command_comes_from_a_declaration(
    command: str, classes: list[type[Any]]
) -> None:
    declared_flags = {spec.flag for cls in classes for _, spec in _specs(cls) if spec.flag}
    shown = _help_flags(command)
    assert shown - COMMAND_OPTIONS[command] <= declared_flags
    if command != "admin":  # admin takes only the database's two
        assert declared_flags <= shown, "a declared flag the command does not offer"


def test_a_flag_wins_over_its_variable_and_derived_defaults_follow() -> None:
    parser = build_parser("coordinator")
    args = parser.parse_args(["coordinator", "--port", "7000", "--data-dir", "/srv/c"])
    env = {"TROOP_COORDINATOR_PORT": "6000", "TROOP_HEARTBEAT_INTERVAL_SECONDS": "4"}
    settings = CoordinatorSettings.from_args(args, env)
    assert settings.port == 7000 and settings.data_dir == Path("/srv/c")
    assert settings.effective_database_url == "sqlite+aiosqlite:////srv/c/coordinator.db"
    assert settings.node_ttl_s == 12  # 3 × the interval, the variable read
    args = build_parser("client").parse_args(["client", "--coordinator", "c:1", "--port", "0"])
    sidecar = SidecarSettings.from_args(args, {"TROOP_COORDINATOR": "elsewhere:2"})
    assert (sidecar.client.coordinator, sidecar.http_port) == ("c:1", 0)


def test_the_client_config_dir_follows_xdg_unless_set(tmp_path: Path) -> None:
    xdg = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert ClientSettings.from_env(xdg).identity_path == tmp_path / "troop" / "identity.key"
    mine = {**xdg, "TROOP_CONFIG_DIR": str(tmp_path / "mine")}
    assert ClientSettings.from_env(mine).config_dir == tmp_path / "mine"


def _checked(spec: Spec) -> bool:
    """Whether the declaration refuses some text (numbers and choices do; free text not)."""
    parse = spec.parse
    return isinstance(parse, Choice) or parse.__qualname__.startswith(
        (integer.__qualname__, number.__qualname__, "_")
    )


BAD = [
    pytest.param(cls, spec.env, id=spec.env)
    for cls in ALL
    for _, spec in _specs(cls)
    if spec.env and _checked(spec)
]


@pytest.mark.parametrize(("cls", "variable"), BAD)
def test_a_bad_value_is_a_config_error_naming_its_variable(cls: type[Any], variable: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(variable)):
        cls.from_env({variable: "-lots"})


def test_a_bad_flag_value_names_the_flag() -> None:
    args = build_parser("worker").parse_args(["worker", "--port", "http"])
    with pytest.raises(ConfigError, match="--port must be an integer, got 'http'"):
        WorkerSettings.from_args(args, {})


SECRET = "s3cr3t-Value"


@pytest.mark.parametrize(
    ("cls", "env"),
    [
        (
            CoordinatorSettings,
            {
                "TROOP_DATABASE_URL": f"postgresql://troop:{SECRET}@db.internal:5432/troop",
                "TROOP_REDIS_URL": f"redis://:{SECRET}@cache:6379/0",
            },
        ),
        (
            WorkerSettings,
            {
                "TROOP_WORKER_UPSTREAM_API_KEY": SECRET,
                "TROOP_WORKER_INVITE": SECRET,
                "TROOP_WORKER_UPSTREAM_URL": f"https://relay:{SECRET}@gpu.example/v1",
            },
        ),
        (SidecarSettings, {"TROOP_CLIENT_API_KEYS": f"{SECRET},other-{SECRET}"}),
    ],
)
def test_secrets_never_show_in_repr_or_str(cls: type[Any], env: dict[str, str]) -> None:
    settings = cls.from_env(env)
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert SECRET not in shown
        assert "***" in shown
    if cls is CoordinatorSettings:  # a URL keeps what an operator needs to recognise it
        assert "postgresql://troop:***@db.internal:5432/troop" in repr(settings)
        assert settings.redis_url.endswith(f"{SECRET}@cache:6379/0")  # the value itself is whole

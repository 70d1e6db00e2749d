"""Settings come from TROOP_* variables, with the documented defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from troop_coordinator.settings import CoordinatorSettings


def test_defaults() -> None:
    settings = CoordinatorSettings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 50051)
    assert settings.data_dir == Path("~/.local/share/troop/coordinator").expanduser()
    assert settings.effective_database_url == (
        f"sqlite+aiosqlite:///{settings.data_dir / 'coordinator.db'}"
    )
    assert settings.ticket_key_path == settings.data_dir / "ticket-key.pem"
    assert settings.starter_millicredits == 3_600_000
    assert settings.reservation_millicredits == 300_000
    assert settings.ticket_ttl_s == 300
    assert settings.heartbeat_interval_s == 5
    assert settings.node_ttl_s == 15
    assert settings.sweep_interval_s == 30
    assert settings.benchmark_matrix_size == 4096


def test_environment_overrides(tmp_path: Path) -> None:
    settings = CoordinatorSettings.from_env(
        {
            "TROOP_COORDINATOR_HOST": "0.0.0.0",
            "TROOP_COORDINATOR_PORT": "0",
            "TROOP_DATA_DIR": str(tmp_path),
            "TROOP_DATABASE_URL": "postgresql+asyncpg://db/troop",
            "TROOP_STARTER_CREDITS": "10",
            "TROOP_RESERVATION_CREDITS": "2",
            "TROOP_TICKET_TTL_SECONDS": "60",
            "TROOP_HEARTBEAT_INTERVAL_SECONDS": "2",
            "TROOP_BENCHMARK_MATRIX_SIZE": "128",
        }
    )
    assert settings.bind == "0.0.0.0:0"
    assert settings.effective_database_url == "postgresql+asyncpg://db/troop"
    assert settings.starter_millicredits == 10_000
    assert settings.node_ttl_s == 6  # 3 × the interval unless set
    assert settings.benchmark_matrix_size == 128


def test_replacing_data_dir_moves_the_embedded_database(tmp_path: Path) -> None:
    # What `troop coordinator --data-dir D` does.
    settings = dataclasses.replace(CoordinatorSettings.from_env({}), data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'coordinator.db'}"


def test_malformed_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="TROOP_COORDINATOR_PORT"):
        CoordinatorSettings.from_env({"TROOP_COORDINATOR_PORT": "eighty"})

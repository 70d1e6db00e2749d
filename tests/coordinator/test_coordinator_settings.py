"""Settings come from TROOP_* variables, with the documented defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from troop_common.config import ConfigError
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
    assert (settings.model_catalog, settings.max_prompt_tokens) == ("", 8192)
    assert settings.default_model_parameters == 1_000_000_000
    assert settings.countersign_s == 60
    assert settings.ticket_ttl_s == 300
    assert settings.heartbeat_interval_s == 5
    assert settings.node_ttl_s == 15
    assert settings.sweep_interval_s == 30
    assert (settings.proof_rows, settings.proof_cols, settings.proof_target_s) == (2048, 2048, 2)
    assert settings.challenge_interval_s == 60


def test_environment_overrides(tmp_path: Path) -> None:
    settings = CoordinatorSettings.from_env(
        {
            "TROOP_COORDINATOR_HOST": "0.0.0.0",
            "TROOP_COORDINATOR_PORT": "0",
            "TROOP_DATA_DIR": str(tmp_path),
            "TROOP_DATABASE_URL": "postgresql+asyncpg://db/troop",
            "TROOP_STARTER_CREDITS": "10",
            "TROOP_MODEL_CATALOG": "llama3=8b, tiny=500k",
            "TROOP_DEFAULT_MODEL_PARAMETERS": "1.5B",
            "TROOP_TICKET_TTL_SECONDS": "60",
            "TROOP_HEARTBEAT_INTERVAL_SECONDS": "2",
            "TROOP_PROOF_ROWS": "128",
            "TROOP_CHALLENGE_INTERVAL_SECONDS": "5",
        }
    )
    assert settings.bind == "0.0.0.0:0"
    assert settings.effective_database_url == "postgresql+asyncpg://db/troop"
    assert settings.starter_millicredits == 10_000
    assert settings.node_ttl_s == 6  # 3 × the interval unless set
    assert settings.proof_rows == 128 and settings.challenge_interval_s == 5
    catalog = settings.catalog()
    assert catalog.parameters("llama3") == 8_000_000_000
    assert catalog.parameters("tiny") == 500_000
    assert catalog.parameters("qwen2.5-0.5b-instruct") == 500_000_000
    assert catalog.parameters("mystery") == 1_500_000_000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TROOP_MODEL_CATALOG", "llama3"),
        ("TROOP_MODEL_CATALOG", "llama3=lots"),
        ("TROOP_DEFAULT_MODEL_PARAMETERS", "0"),
    ],
)
def test_a_malformed_catalog_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        CoordinatorSettings.from_env({variable: value})


def test_replacing_data_dir_moves_the_embedded_database(tmp_path: Path) -> None:
    # What `troop coordinator --data-dir D` does.
    settings = dataclasses.replace(CoordinatorSettings.from_env({}), data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'coordinator.db'}"


def test_malformed_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="TROOP_COORDINATOR_PORT"):
        CoordinatorSettings.from_env({"TROOP_COORDINATOR_PORT": "eighty"})

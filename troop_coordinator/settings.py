"""The coordinator's one settings object, read from the environment once, in `main()`.

Each setting is declared once below (variable, flag, default, help); the README's
configuration table is rendered from these declarations (troop_common.settings_spec).

Credits are kept as integer millicredits: 1 credit = 1000 millicredits = one
second of reference compute. `benchmark_reference_ms` is how long the
reference machine (a 2-core x86 CPU with numpy/OpenBLAS, measured at ~1.5 s)
takes for one 4096×4096 float32 multiplication (≈ 0.0916 TFLOP/s); a node's
multiplier is the speed the coordinator measures in its proof of hardware over
that, clamped to [0.01, 100000] (docs/adr/0030-proof-of-hardware.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from troop_common.config import ConfigError
from troop_common.interceptors.ratelimit import parse_rules
from troop_common.keys import is_public_key_hex
from troop_common.metrics import metrics_host_setting, metrics_port_setting
from troop_common.ratelimit import TrustedProxies
from troop_common.settings_spec import (
    Settings,
    comma_list,
    group,
    integer,
    mask_url_password,
    number,
    on_unless_off,
    one_of,
    path,
    setting,
)
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


def _parameters(name: str, raw: str) -> int:
    try:
        return parse_parameters(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _three_heartbeats(values: Mapping[str, Any], env: Mapping[str, str]) -> float:
    return float(3 * values["heartbeat_interval_s"])


@dataclass(frozen=True, repr=False)
class CoordinatorSettings(Settings):
    host: str = setting(
        "127.0.0.1", env="TROOP_COORDINATOR_HOST", flag="--host", help="where it listens"
    )
    port: int = setting(
        50051,
        env="TROOP_COORDINATOR_PORT",
        flag="--port",
        parse=integer(),
        help="its gRPC port (0 picks a free port)",
    )
    metrics_host: str = metrics_host_setting("TROOP_COORDINATOR_METRICS_HOST")
    metrics_port: int = metrics_port_setting("TROOP_COORDINATOR_METRICS_PORT")
    data_dir: Path = setting(
        default_factory=lambda: DEFAULT_DATA_DIR.expanduser(),
        env="TROOP_DATA_DIR",
        flag="--data-dir",
        parse=path,
        shown_default="`~/.local/share/troop/coordinator`",
        help="ticket keys (`ticket-keys/`, mode 0400), the SQLite ledger, the audit log; the "
        "directory is 0700 and its files 0600 whatever the umask (a looser one is tightened "
        "at start, with a warning)",
    )
    database_url: str = setting(
        "",
        env="TROOP_DATABASE_URL",
        flag="--database-url",
        secret=mask_url_password,
        shown_default="SQLite in the data dir",
        help="`postgresql+asyncpg://user@host/db` for PostgreSQL ([docs/state.md](docs/state.md); "
        "back it up with `scripts/backup`, restore with `scripts/restore`); "
        "TLS as the URL says (`?ssl=` or libpq's `?sslmode=`: `disable` only for a database on "
        "loopback or a private link; the driver's default is `prefer`)",
    )
    database_pool_size: int = setting(
        DEFAULT_POOL_SIZE,
        env="TROOP_DATABASE_POOL_SIZE",
        parse=integer(),
        help="database connections the coordinator keeps open: about the ledger calls in "
        "flight at once ([ADR 34](docs/adr/0034-one-round-trip-ledger.md))",
    )
    database_max_overflow: int = setting(
        DEFAULT_MAX_OVERFLOW,
        env="TROOP_DATABASE_MAX_OVERFLOW",
        parse=integer(),
        help="connections opened beyond the pool under a burst, closed when idle again (every "
        "replica's pool + overflow must fit PostgreSQL's `max_connections`)",
    )
    redis_url: str = setting(
        "",
        env="TROOP_REDIS_URL",
        secret=mask_url_password,
        shown_default="in-process",
        help="`redis://host:6379/0`: liveness, replay sets and rate limits shared by replicas",
    )
    redis_prefix: str = setting(
        "troop:", env="TROOP_REDIS_PREFIX", help="prefix of every Redis key"
    )
    redis_check_interval_s: float = setting(
        2.0,
        env="TROOP_REDIS_CHECK_SECONDS",
        parse=number(),
        help="how often Redis health is probed",
    )
    starter_credits: int = setting(
        3600,
        env="TROOP_STARTER_CREDITS",
        parse=integer(),
        help="credits (seconds of compute) a new user receives once",
    )
    ticket_ttl_s: int = setting(
        300, env="TROOP_TICKET_TTL_SECONDS", parse=integer(), help="ticket lifetime"
    )
    heartbeat_interval_s: int = setting(
        5,
        env="TROOP_HEARTBEAT_INTERVAL_SECONDS",
        parse=integer(),
        help="heartbeat cadence asked of workers",
    )
    node_ttl_s: float = setting(
        15.0,
        env="TROOP_NODE_TTL_SECONDS",
        parse=number(),
        derive=_three_heartbeats,
        shown_default="3 × heartbeat interval",
        help="a node silent this long leaves discovery",
    )
    sweep_interval_s: float = setting(
        30.0,
        env="TROOP_SWEEP_INTERVAL_SECONDS",
        parse=number(),
        help="how often expired reservations are returned, and receipts past their "
        "countersign deadline settled",
    )
    settle_grace_s: float = setting(
        300.0,
        env="TROOP_SETTLE_GRACE_SECONDS",
        parse=number(),
        help="receipts still accepted after the ticket expires; then the sweeper returns the "
        "reservation (a job with a receipt, or with its client's countersignature of tokens "
        "received, settles on it instead)",
    )
    benchmark_reference_ms: float = setting(
        1500.0,
        env="TROOP_BENCHMARK_REFERENCE_MS",
        parse=number(),
        help="the reference machine's 4096³ fp32 multiply (≈ 0.0916 TFLOP/s: multiplier 1.0)",
    )
    challenge_ttl_s: float = 300.0
    # Proof of hardware (troop_coordinator.proof): rate, product shape, sizing.
    challenge_interval_s: float = setting(
        60.0,
        env="TROOP_CHALLENGE_INTERVAL_SECONDS",
        parse=number(),
        help="a node is offered a proof-of-hardware challenge at most this often",
    )
    proof_rows: int = setting(
        2048, env="TROOP_PROOF_ROWS", parse=integer(), help="rows of the proof's product C"
    )
    proof_cols: int = setting(
        2048, env="TROOP_PROOF_COLS", parse=integer(), help="columns of the proof's product C"
    )
    proof_calibration_inner: int = setting(
        2048,
        env="TROOP_PROOF_CALIBRATION_INNER",
        parse=integer(),
        help="a node's first challenge's inner size",
    )
    proof_min_inner: int = setting(
        1024, env="TROOP_PROOF_MIN_INNER", parse=integer(), help="smallest inner size"
    )
    proof_max_inner: int = setting(
        1 << 20, env="TROOP_PROOF_MAX_INNER", parse=integer(), help="largest inner size"
    )
    proof_target_s: float = setting(
        2.0,
        env="TROOP_PROOF_TARGET_SECONDS",
        parse=number(),
        help="how long later challenges are sized to take "
        "([ADR 30](docs/adr/0030-proof-of-hardware.md))",
    )
    shutdown_grace_s: float = 5.0
    # Trust (docs/security.md): who may join, ticket key rotation, usage disputes, TLS.
    admission: str = setting(
        "open",
        env="TROOP_ADMISSION",
        parse=one_of(*ADMISSION_MODES, casefold=True),
        help="who may receive starter credits: `open`, `invite` or `pow`",
    )
    # Nodes (docs/adr/0033): who may bind node ids, how many per key, endpoint proofs.
    node_admission: str = setting(
        "open",
        env="TROOP_NODE_ADMISSION",
        parse=one_of(*NODE_ADMISSION_MODES, casefold=True),
        help="who may add nodes: `open`, `allowlist` or `invite` "
        "([ADR 33](docs/adr/0033-nodes-prove-their-endpoint.md))",
    )
    node_allowlist: tuple[str, ...] = setting(
        (),
        env="TROOP_NODE_ALLOWLIST",
        parse=comma_list,
        help="hex node keys (comma-separated) admitted when `TROOP_NODE_ADMISSION=allowlist`",
    )
    max_nodes_per_key: int = setting(
        4, env="TROOP_MAX_NODES_PER_KEY", parse=integer(), help="node ids one node key may bind"
    )
    verify_node_endpoints: bool = setting(
        True,
        env="TROOP_VERIFY_NODE_ENDPOINTS",
        parse=on_unless_off,
        help="list a node only once its advertised endpoint answered with its key (`0` only "
        "for tests of bare identities)",
    )
    pow_bits: int = setting(
        20, env="TROOP_POW_BITS", parse=integer(), help="proof-of-work difficulty for `pow`"
    )
    ticket_key_reload_s: float = setting(
        5.0,
        env="TROOP_TICKET_KEY_RELOAD_SECONDS",
        parse=number(),
        help="how often the key directory is re-read",
    )
    ticket_key_grace_s: float | None = setting(
        None,
        env="TROOP_TICKET_KEY_GRACE_SECONDS",
        parse=number(),
        shown_default="ticket TTL",
        help="how long a rotated-out ticket key still verifies (unset: the ticket TTL, "
        "`effective_ticket_key_grace_s`)",
    )
    usage_token_slack: int = setting(
        2,
        env="TROOP_USAGE_TOKEN_SLACK",
        parse=integer(),
        help="completion tokens the two sides of a job may differ by without a dispute",
    )
    # Prices (troop_coordinator.pricing, docs/adr/0031): parameter counts by model id.
    model_catalog: str = setting(
        "",
        env="TROOP_MODEL_CATALOG",
        help="model sizes that set prices: `model=SIZE,…` (e.g. `llama3=8b`); a model not "
        "listed is sized by its id (`-3b`, `-135m`), else by the default below "
        "([ADR 31](docs/adr/0031-priced-by-counted-work.md))",
    )
    default_model_parameters: int = setting(
        1_000_000_000,
        env="TROOP_DEFAULT_MODEL_PARAMETERS",
        parse=_parameters,
        shown_default="`1b`",
        help="the size of a model neither the catalog nor its id sizes",
    )
    max_prompt_tokens: int = setting(
        8192,
        env="TROOP_MAX_PROMPT_TOKENS",
        parse=integer(),
        help="the most prompt tokens one job may carry (and the reservation's prompt bound "
        "when a client sends none)",
    )
    countersign_s: float = setting(
        60.0,
        env="TROOP_COUNTERSIGN_SECONDS",
        parse=number(),
        help="how long a receipt waits for the client's countersignature before the job "
        "settles on the receipt alone ([ADR 32](docs/adr/0032-two-sided-settlement.md)), and a "
        "countersignature of tokens received for the node's receipt before the job settles on "
        "the client's count alone ([ADR 48](docs/adr/0048-paid-for-what-the-client-vouched.md))",
    )
    verifier_keys: tuple[str, ...] = setting(
        (),
        env="TROOP_VERIFIER_KEYS",
        parse=comma_list,
        help="hex Ed25519 keys (comma-separated) of the verifiers whose verdicts this "
        "coordinator acts on; empty: every verdict is refused (UNAUTHENTICATED) "
        "([ADR 53](docs/adr/0053-acting-on-verdicts.md))",
    )
    verification_hold_s: float = setting(
        259200.0,
        env="TROOP_VERIFICATION_HOLD_SECONDS",
        parse=number(positive=True),
        help="how long a failed check holds the node's earnings and keeps the model off it "
        "(3 days)",
    )
    verification_bar_after: int = setting(
        3,
        env="TROOP_VERIFICATION_BAR_AFTER",
        parse=integer(minimum=1),
        help="failed checks within the hold that bar the node key (refused at heartbeat, "
        "never listed or routed; its held earnings go back to the users who paid them)",
    )
    tls: TlsSettings = group(TlsSettings)
    tls_name: str = setting(
        "",
        env="TROOP_COORDINATOR_TLS_NAME",
        shown_default="the host it listens on (loopback for a wildcard bind)",
        help="the name its TLS certificate is for, which its REST face's Envoy checks "
        "(`--http-port`; [ADR 56](docs/adr/0056-rest-face-upstream.md))",
    )
    rate_limits: str = setting(
        DEFAULT_RATE_LIMITS,
        env="TROOP_RATE_LIMITS",
        empty_is_value=True,
        help="per-method limits: `METHOD[+METHOD]=N/SECONDS@ip|user`, comma-separated; set "
        "but empty for none (discovery per IP, Authorize per user, proofs per node key)",
    )
    audit_dir: Path | None = setting(
        None,
        env="TROOP_AUDIT_DIR",
        parse=path,
        shown_default="`<data dir>/audit`",
        help="audit JSON lines (rotated)",
    )
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"),
        env="TROOP_TRUSTED_PROXIES",
        parse=comma_list,
        empty_is_value=True,
        help="IPs or CIDRs whose `x-forwarded-for` names the client (the local Envoy); its "
        "right-most entry is used ([docs/deployment.md](docs/deployment.md))",
    )
    # Floods (docs/security.md).
    xff_trusted_hops: int = setting(
        0,
        env="TROOP_XFF_TRUSTED_HOPS",
        parse=integer(),
        help="proxies in front of the REST face's Envoy whose `x-forwarded-for` it trusts",
    )
    max_open_jobs_per_user: int = setting(
        16,
        env="TROOP_MAX_OPEN_JOBS_PER_USER",
        parse=integer(),
        help="open reservations one user may hold; Authorize refuses more with RESOURCE_EXHAUSTED",
    )
    audit_events_per_source: int = setting(
        10,
        env="TROOP_AUDIT_EVENTS_PER_SOURCE",
        parse=integer(),
        help="security events per minute per address stored as they are in the audit table; "
        'the rest are summed in one "suppressed" row',
    )
    audit_events_per_minute: int = setting(
        100,
        env="TROOP_AUDIT_EVENTS_PER_MINUTE",
        parse=integer(),
        help="the same, over all addresses (the table grows by at most this + 21 rows a minute)",
    )

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
        bad_keys = [k for k in self.verifier_keys if not is_public_key_hex(k)]
        if bad_keys:
            raise ConfigError(f"TROOP_VERIFIER_KEYS: not a hex Ed25519 key: {bad_keys[0]!r}")
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

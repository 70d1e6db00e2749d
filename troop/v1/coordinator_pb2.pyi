import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from troop.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdmissionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADMISSION_MODE_UNSPECIFIED: _ClassVar[AdmissionMode]
    ADMISSION_MODE_OPEN: _ClassVar[AdmissionMode]
    ADMISSION_MODE_INVITE: _ClassVar[AdmissionMode]
    ADMISSION_MODE_POW: _ClassVar[AdmissionMode]

class JobOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_OUTCOME_UNSPECIFIED: _ClassVar[JobOutcome]
    JOB_OUTCOME_COMPLETED: _ClassVar[JobOutcome]
    JOB_OUTCOME_FAILED: _ClassVar[JobOutcome]

class SettlementKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTLEMENT_KIND_UNSPECIFIED: _ClassVar[SettlementKind]
    SETTLEMENT_KIND_CHARGED: _ClassVar[SettlementKind]
    SETTLEMENT_KIND_REFUNDED: _ClassVar[SettlementKind]
    SETTLEMENT_KIND_EXPIRED: _ClassVar[SettlementKind]
    SETTLEMENT_KIND_PENDING: _ClassVar[SettlementKind]

class TransactionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_KIND_UNSPECIFIED: _ClassVar[TransactionKind]
    TRANSACTION_KIND_GRANT: _ClassVar[TransactionKind]
    TRANSACTION_KIND_RESERVE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_RELEASE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_EARN: _ClassVar[TransactionKind]
    TRANSACTION_KIND_REFUND: _ClassVar[TransactionKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_OPEN: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_CHARGED: _ClassVar[JobState]
    JOB_STATE_REFUNDED: _ClassVar[JobState]
    JOB_STATE_EXPIRED: _ClassVar[JobState]

class VerdictOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_OUTCOME_UNSPECIFIED: _ClassVar[VerdictOutcome]
    VERDICT_OUTCOME_PASSED: _ClassVar[VerdictOutcome]
    VERDICT_OUTCOME_FAILED: _ClassVar[VerdictOutcome]
ADMISSION_MODE_UNSPECIFIED: AdmissionMode
ADMISSION_MODE_OPEN: AdmissionMode
ADMISSION_MODE_INVITE: AdmissionMode
ADMISSION_MODE_POW: AdmissionMode
JOB_OUTCOME_UNSPECIFIED: JobOutcome
JOB_OUTCOME_COMPLETED: JobOutcome
JOB_OUTCOME_FAILED: JobOutcome
SETTLEMENT_KIND_UNSPECIFIED: SettlementKind
SETTLEMENT_KIND_CHARGED: SettlementKind
SETTLEMENT_KIND_REFUNDED: SettlementKind
SETTLEMENT_KIND_EXPIRED: SettlementKind
SETTLEMENT_KIND_PENDING: SettlementKind
TRANSACTION_KIND_UNSPECIFIED: TransactionKind
TRANSACTION_KIND_GRANT: TransactionKind
TRANSACTION_KIND_RESERVE: TransactionKind
TRANSACTION_KIND_RELEASE: TransactionKind
TRANSACTION_KIND_EARN: TransactionKind
TRANSACTION_KIND_REFUND: TransactionKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_OPEN: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_CHARGED: JobState
JOB_STATE_REFUNDED: JobState
JOB_STATE_EXPIRED: JobState
VERDICT_OUTCOME_UNSPECIFIED: VerdictOutcome
VERDICT_OUTCOME_PASSED: VerdictOutcome
VERDICT_OUTCOME_FAILED: VerdictOutcome

class GetPublicKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("kid", "algorithm", "public_key_pem")
    KID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    kid: str
    algorithm: str
    public_key_pem: str
    def __init__(self, kid: _Optional[str] = ..., algorithm: _Optional[str] = ..., public_key_pem: _Optional[str] = ...) -> None: ...

class GetKeySetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JsonWebKey(_message.Message):
    __slots__ = ("kty", "kid", "use", "alg", "n", "e")
    KTY_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    USE_FIELD_NUMBER: _ClassVar[int]
    ALG_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    E_FIELD_NUMBER: _ClassVar[int]
    kty: str
    kid: str
    use: str
    alg: str
    n: str
    e: str
    def __init__(self, kty: _Optional[str] = ..., kid: _Optional[str] = ..., use: _Optional[str] = ..., alg: _Optional[str] = ..., n: _Optional[str] = ..., e: _Optional[str] = ...) -> None: ...

class GetKeySetResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[JsonWebKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[JsonWebKey, _Mapping]]] = ...) -> None: ...

class NodeLoad(_message.Message):
    __slots__ = ("active_jobs", "queue_depth", "max_concurrent_jobs")
    ACTIVE_JOBS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    active_jobs: int
    queue_depth: int
    max_concurrent_jobs: int
    def __init__(self, active_jobs: _Optional[int] = ..., queue_depth: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ...) -> None: ...

class NodeHardware(_message.Message):
    __slots__ = ("device", "cpu_count", "memory_bytes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    device: str
    cpu_count: int
    memory_bytes: int
    def __init__(self, device: _Optional[str] = ..., cpu_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "endpoint", "models", "load", "hardware", "owner_public_key", "invite_code", "tls")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    OWNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    INVITE_CODE_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    models: _containers.RepeatedScalarFieldContainer[str]
    load: NodeLoad
    hardware: NodeHardware
    owner_public_key: str
    invite_code: str
    tls: bool
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., hardware: _Optional[_Union[NodeHardware, _Mapping]] = ..., owner_public_key: _Optional[str] = ..., invite_code: _Optional[str] = ..., tls: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("interval_seconds", "multiplier", "endpoint_proven")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_PROVEN_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: int
    multiplier: float
    endpoint_proven: bool
    def __init__(self, interval_seconds: _Optional[int] = ..., multiplier: _Optional[float] = ..., endpoint_proven: _Optional[bool] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "endpoint", "models", "load", "hardware", "multiplier", "last_seen", "node_public_key", "tls", "verification")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    NODE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    models: _containers.RepeatedScalarFieldContainer[str]
    load: NodeLoad
    hardware: NodeHardware
    multiplier: float
    last_seen: _timestamp_pb2.Timestamp
    node_public_key: str
    tls: bool
    verification: NodeVerification
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., hardware: _Optional[_Union[NodeHardware, _Mapping]] = ..., multiplier: _Optional[float] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node_public_key: _Optional[str] = ..., tls: _Optional[bool] = ..., verification: _Optional[_Union[NodeVerification, _Mapping]] = ...) -> None: ...

class NodeVerification(_message.Message):
    __slots__ = ("checks_passed", "checks_failed", "last_checked", "held_until", "failed_models", "barred")
    CHECKS_PASSED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKED_FIELD_NUMBER: _ClassVar[int]
    HELD_UNTIL_FIELD_NUMBER: _ClassVar[int]
    FAILED_MODELS_FIELD_NUMBER: _ClassVar[int]
    BARRED_FIELD_NUMBER: _ClassVar[int]
    checks_passed: int
    checks_failed: int
    last_checked: _timestamp_pb2.Timestamp
    held_until: _timestamp_pb2.Timestamp
    failed_models: _containers.RepeatedScalarFieldContainer[str]
    barred: bool
    def __init__(self, checks_passed: _Optional[int] = ..., checks_failed: _Optional[int] = ..., last_checked: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., held_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., failed_models: _Optional[_Iterable[str]] = ..., barred: _Optional[bool] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("model", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "next_page_token")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    next_page_token: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class GetAdmissionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAdmissionResponse(_message.Message):
    __slots__ = ("mode", "pow_bits")
    MODE_FIELD_NUMBER: _ClassVar[int]
    POW_BITS_FIELD_NUMBER: _ClassVar[int]
    mode: AdmissionMode
    pow_bits: int
    def __init__(self, mode: _Optional[_Union[AdmissionMode, str]] = ..., pow_bits: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("invite_code", "pow_nonce")
    INVITE_CODE_FIELD_NUMBER: _ClassVar[int]
    POW_NONCE_FIELD_NUMBER: _ClassVar[int]
    invite_code: str
    pow_nonce: str
    def __init__(self, invite_code: _Optional[str] = ..., pow_nonce: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("public_key", "granted_millicredits", "balance_millicredits", "already_joined")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    GRANTED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_JOINED_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    granted_millicredits: int
    balance_millicredits: int
    already_joined: bool
    def __init__(self, public_key: _Optional[str] = ..., granted_millicredits: _Optional[int] = ..., balance_millicredits: _Optional[int] = ..., already_joined: _Optional[bool] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("model", "exclude_node_ids", "max_tokens", "max_prompt_tokens", "node_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    exclude_node_ids: _containers.RepeatedScalarFieldContainer[str]
    max_tokens: int
    max_prompt_tokens: int
    node_id: str
    def __init__(self, model: _Optional[str] = ..., exclude_node_ids: _Optional[_Iterable[str]] = ..., max_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("job_id", "ticket", "node_id", "endpoint", "expires_at", "reserved_millicredits", "node_public_key", "max_tokens", "max_prompt_tokens", "price", "tls")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    NODE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    ticket: str
    node_id: str
    endpoint: str
    expires_at: _timestamp_pb2.Timestamp
    reserved_millicredits: int
    node_public_key: str
    max_tokens: int
    max_prompt_tokens: int
    price: _common_pb2.ModelPrice
    tls: bool
    def __init__(self, job_id: _Optional[str] = ..., ticket: _Optional[str] = ..., node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reserved_millicredits: _Optional[int] = ..., node_public_key: _Optional[str] = ..., max_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., price: _Optional[_Union[_common_pb2.ModelPrice, _Mapping]] = ..., tls: _Optional[bool] = ...) -> None: ...

class JobReceipt(_message.Message):
    __slots__ = ("job_id", "node_id", "outcome", "duration_ms", "usage", "finished_at", "presentation", "client_nonce", "evidence_sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PRESENTATION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NONCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    outcome: JobOutcome
    duration_ms: int
    usage: _common_pb2.Usage
    finished_at: _timestamp_pb2.Timestamp
    presentation: bytes
    client_nonce: str
    evidence_sha256: bytes
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., outcome: _Optional[_Union[JobOutcome, str]] = ..., duration_ms: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., presentation: _Optional[bytes] = ..., client_nonce: _Optional[str] = ..., evidence_sha256: _Optional[bytes] = ...) -> None: ...

class SubmitReceiptRequest(_message.Message):
    __slots__ = ("receipt", "signature")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    receipt: bytes
    signature: bytes
    def __init__(self, receipt: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitReceiptResponse(_message.Message):
    __slots__ = ("job_id", "kind", "charged_millicredits", "released_millicredits", "already_settled")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHARGED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_SETTLED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: SettlementKind
    charged_millicredits: int
    released_millicredits: int
    already_settled: bool
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[SettlementKind, str]] = ..., charged_millicredits: _Optional[int] = ..., released_millicredits: _Optional[int] = ..., already_settled: _Optional[bool] = ...) -> None: ...

class ReportUsageRequest(_message.Message):
    __slots__ = ("job_id", "completion_tokens", "stream_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STREAM_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    completion_tokens: int
    stream_ms: int
    def __init__(self, job_id: _Optional[str] = ..., completion_tokens: _Optional[int] = ..., stream_ms: _Optional[int] = ...) -> None: ...

class ReportUsageResponse(_message.Message):
    __slots__ = ("job_id", "compared", "disputed", "already_reported", "kind", "charged_millicredits")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    DISPUTED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REPORTED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHARGED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    compared: bool
    disputed: bool
    already_reported: bool
    kind: SettlementKind
    charged_millicredits: int
    def __init__(self, job_id: _Optional[str] = ..., compared: _Optional[bool] = ..., disputed: _Optional[bool] = ..., already_reported: _Optional[bool] = ..., kind: _Optional[_Union[SettlementKind, str]] = ..., charged_millicredits: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    def __init__(self, public_key: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("public_key", "balance_millicredits", "reserved_millicredits")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    balance_millicredits: int
    reserved_millicredits: int
    def __init__(self, public_key: _Optional[str] = ..., balance_millicredits: _Optional[int] = ..., reserved_millicredits: _Optional[int] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("id", "created_at", "kind", "amount_millicredits", "job_id", "balance_after_millicredits")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    id: int
    created_at: _timestamp_pb2.Timestamp
    kind: TransactionKind
    amount_millicredits: int
    job_id: str
    balance_after_millicredits: int
    def __init__(self, id: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[TransactionKind, str]] = ..., amount_millicredits: _Optional[int] = ..., job_id: _Optional[str] = ..., balance_after_millicredits: _Optional[int] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("public_key", "page_size", "page_token")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    page_size: int
    page_token: str
    def __init__(self, public_key: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetChallengeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class GetChallengeResponse(_message.Message):
    __slots__ = ("challenge_id", "expires_at", "rows", "inner", "cols")
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INNER_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    challenge_id: str
    expires_at: _timestamp_pb2.Timestamp
    rows: int
    inner: int
    cols: int
    def __init__(self, challenge_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., inner: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class StartChallengeRequest(_message.Message):
    __slots__ = ("node_id", "challenge_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    challenge_id: str
    def __init__(self, node_id: _Optional[str] = ..., challenge_id: _Optional[str] = ...) -> None: ...

class StartChallengeResponse(_message.Message):
    __slots__ = ("seed",)
    SEED_FIELD_NUMBER: _ClassVar[int]
    seed: int
    def __init__(self, seed: _Optional[int] = ...) -> None: ...

class CommitProofRequest(_message.Message):
    __slots__ = ("node_id", "challenge_id", "merkle_root", "precision", "reported_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    MERKLE_ROOT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    REPORTED_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    challenge_id: str
    merkle_root: bytes
    precision: str
    reported_ms: int
    def __init__(self, node_id: _Optional[str] = ..., challenge_id: _Optional[str] = ..., merkle_root: _Optional[bytes] = ..., precision: _Optional[str] = ..., reported_ms: _Optional[int] = ...) -> None: ...

class CommitProofResponse(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedScalarFieldContainer[int]
    cols: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, rows: _Optional[_Iterable[int]] = ..., cols: _Optional[_Iterable[int]] = ...) -> None: ...

class ProofOpening(_message.Message):
    __slots__ = ("row", "values", "path")
    ROW_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    row: int
    values: bytes
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, row: _Optional[int] = ..., values: _Optional[bytes] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class VerifyProofRequest(_message.Message):
    __slots__ = ("node_id", "challenge_id", "openings")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    OPENINGS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    challenge_id: str
    openings: _containers.RepeatedCompositeFieldContainer[ProofOpening]
    def __init__(self, node_id: _Optional[str] = ..., challenge_id: _Optional[str] = ..., openings: _Optional[_Iterable[_Union[ProofOpening, _Mapping]]] = ...) -> None: ...

class VerifyProofResponse(_message.Message):
    __slots__ = ("multiplier", "tflops", "tier", "measured_ms")
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TFLOPS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MEASURED_MS_FIELD_NUMBER: _ClassVar[int]
    multiplier: float
    tflops: float
    tier: str
    measured_ms: int
    def __init__(self, multiplier: _Optional[float] = ..., tflops: _Optional[float] = ..., tier: _Optional[str] = ..., measured_ms: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job_id", "model", "node_id", "state", "reserved_millicredits", "charged_millicredits", "max_tokens", "max_prompt_tokens", "prompt_millicredits_per_1k_tokens", "completion_millicredits_per_1k_tokens", "created_at", "settled_at", "receipt_received", "countersigned", "disputed", "charged_usage")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MILLICREDITS_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_MILLICREDITS_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SETTLED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COUNTERSIGNED_FIELD_NUMBER: _ClassVar[int]
    DISPUTED_FIELD_NUMBER: _ClassVar[int]
    CHARGED_USAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    node_id: str
    state: JobState
    reserved_millicredits: int
    charged_millicredits: int
    max_tokens: int
    max_prompt_tokens: int
    prompt_millicredits_per_1k_tokens: int
    completion_millicredits_per_1k_tokens: int
    created_at: _timestamp_pb2.Timestamp
    settled_at: _timestamp_pb2.Timestamp
    receipt_received: bool
    countersigned: bool
    disputed: bool
    charged_usage: _common_pb2.Usage
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., node_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reserved_millicredits: _Optional[int] = ..., charged_millicredits: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., prompt_millicredits_per_1k_tokens: _Optional[int] = ..., completion_millicredits_per_1k_tokens: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., settled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receipt_received: _Optional[bool] = ..., countersigned: _Optional[bool] = ..., disputed: _Optional[bool] = ..., charged_usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("job_id", "node_id", "model", "outcome", "positions_checked", "positions_failed", "reason", "evidence", "evidence_signature", "checked_at", "verifier_public_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FAILED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    model: str
    outcome: VerdictOutcome
    positions_checked: int
    positions_failed: int
    reason: str
    evidence: bytes
    evidence_signature: bytes
    checked_at: _timestamp_pb2.Timestamp
    verifier_public_key: str
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., model: _Optional[str] = ..., outcome: _Optional[_Union[VerdictOutcome, str]] = ..., positions_checked: _Optional[int] = ..., positions_failed: _Optional[int] = ..., reason: _Optional[str] = ..., evidence: _Optional[bytes] = ..., evidence_signature: _Optional[bytes] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verifier_public_key: _Optional[str] = ...) -> None: ...

class SubmitVerdictRequest(_message.Message):
    __slots__ = ("verdict", "signature")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    verdict: bytes
    signature: bytes
    def __init__(self, verdict: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitVerdictResponse(_message.Message):
    __slots__ = ("verification", "duplicate")
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    verification: NodeVerification
    duplicate: bool
    def __init__(self, verification: _Optional[_Union[NodeVerification, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

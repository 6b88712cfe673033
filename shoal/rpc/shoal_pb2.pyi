from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RootCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RootCAResponse(_message.Message):
    __slots__ = ("ca_cert_pem", "secure_addr", "node_id")
    CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    SECURE_ADDR_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ca_cert_pem: str
    secure_addr: str
    node_id: str
    def __init__(self, ca_cert_pem: _Optional[str] = ..., secure_addr: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class IssueRequest(_message.Message):
    __slots__ = ("token", "csr_pem", "availability", "hostname")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: str
    availability: str
    hostname: str
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[str] = ..., availability: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class IssueResponse(_message.Message):
    __slots__ = ("node_id", "cert_pem", "ca_cert_pem", "cluster_id", "secure_addr", "manager_id", "cert_chain_pem", "leader_addr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SECURE_ADDR_FIELD_NUMBER: _ClassVar[int]
    MANAGER_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cert_pem: str
    ca_cert_pem: str
    cluster_id: str
    secure_addr: str
    manager_id: str
    cert_chain_pem: str
    leader_addr: str
    def __init__(self, node_id: _Optional[str] = ..., cert_pem: _Optional[str] = ..., ca_cert_pem: _Optional[str] = ..., cluster_id: _Optional[str] = ..., secure_addr: _Optional[str] = ..., manager_id: _Optional[str] = ..., cert_chain_pem: _Optional[str] = ..., leader_addr: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("description", "addr")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    description: bytes
    addr: str
    def __init__(self, description: _Optional[bytes] = ..., addr: _Optional[str] = ...) -> None: ...

class PeriodResponse(_message.Message):
    __slots__ = ("period", "renew_certificate", "trust_root", "managers", "role", "rejoin_spread")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    RENEW_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOT_FIELD_NUMBER: _ClassVar[int]
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REJOIN_SPREAD_FIELD_NUMBER: _ClassVar[int]
    period: float
    renew_certificate: bool
    trust_root: str
    managers: _containers.RepeatedScalarFieldContainer[str]
    role: str
    rejoin_spread: float
    def __init__(self, period: _Optional[float] = ..., renew_certificate: _Optional[bool] = ..., trust_root: _Optional[str] = ..., managers: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., rejoin_spread: _Optional[float] = ...) -> None: ...

class AssignmentsMessage(_message.Message):
    __slots__ = ("type", "payload")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    type: str
    payload: bytes
    def __init__(self, type: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: bytes
    def __init__(self, usage: _Optional[bytes] = ...) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: bytes
    def __init__(self, updates: _Optional[bytes] = ...) -> None: ...

class LogSubscription(_message.Message):
    __slots__ = ("id", "task_ids", "options", "close")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    options: bytes
    close: bool
    def __init__(self, id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ..., options: _Optional[bytes] = ..., close: _Optional[bool] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("task_id", "stream", "timestamp", "data")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    stream: str
    timestamp: float
    data: bytes
    def __init__(self, task_id: _Optional[str] = ..., stream: _Optional[str] = ..., timestamp: _Optional[float] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishLogsMessage(_message.Message):
    __slots__ = ("subscription_id", "entries", "done", "not_found", "errors")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    done: _containers.RepeatedScalarFieldContainer[str]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.ScalarMap[str, str]
    def __init__(self, subscription_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., done: _Optional[_Iterable[str]] = ..., not_found: _Optional[_Iterable[str]] = ..., errors: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RaftEntry(_message.Message):
    __slots__ = ("index", "term", "type", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    type: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., type: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RaftMsg(_message.Message):
    __slots__ = ("type", "src", "dst", "term", "index", "log_term", "entries", "commit", "reject", "reject_hint", "context", "force", "has_snapshot", "snapshot_index", "snapshot_term", "snapshot_voters", "slack")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    HAS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TERM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VOTERS_FIELD_NUMBER: _ClassVar[int]
    SLACK_FIELD_NUMBER: _ClassVar[int]
    type: int
    src: int
    dst: int
    term: int
    index: int
    log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[RaftEntry]
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    force: bool
    has_snapshot: bool
    snapshot_index: int
    snapshot_term: int
    snapshot_voters: _containers.RepeatedScalarFieldContainer[int]
    slack: int
    def __init__(self, type: _Optional[int] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., term: _Optional[int] = ..., index: _Optional[int] = ..., log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[RaftEntry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., context: _Optional[bytes] = ..., force: _Optional[bool] = ..., has_snapshot: _Optional[bool] = ..., snapshot_index: _Optional[int] = ..., snapshot_term: _Optional[int] = ..., snapshot_voters: _Optional[_Iterable[int]] = ..., slack: _Optional[int] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("sender_raft_id", "sender_addr", "messages", "snapshot_chunk", "snapshot_done")
    SENDER_RAFT_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DONE_FIELD_NUMBER: _ClassVar[int]
    sender_raft_id: int
    sender_addr: str
    messages: _containers.RepeatedCompositeFieldContainer[RaftMsg]
    snapshot_chunk: bytes
    snapshot_done: bool
    def __init__(self, sender_raft_id: _Optional[int] = ..., sender_addr: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[RaftMsg, _Mapping]]] = ..., snapshot_chunk: _Optional[bytes] = ..., snapshot_done: _Optional[bool] = ...) -> None: ...

class JoinRaftRequest(_message.Message):
    __slots__ = ("raft_id", "addr")
    RAFT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    raft_id: int
    addr: str
    def __init__(self, raft_id: _Optional[int] = ..., addr: _Optional[str] = ...) -> None: ...

class RaftMember(_message.Message):
    __slots__ = ("raft_id", "node_id", "addr")
    RAFT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    raft_id: int
    node_id: str
    addr: str
    def __init__(self, raft_id: _Optional[int] = ..., node_id: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class JoinRaftResponse(_message.Message):
    __slots__ = ("members", "leader")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[RaftMember]
    leader: int
    def __init__(self, members: _Optional[_Iterable[_Union[RaftMember, _Mapping]]] = ..., leader: _Optional[int] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("method", "path", "headers", "body")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    headers: _containers.ScalarMap[str, str]
    body: bytes
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., body: _Optional[bytes] = ...) -> None: ...

class ForwardChunk(_message.Message):
    __slots__ = ("status", "headers", "data")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.ScalarMap[str, str]
    data: bytes
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ForwardMuxItem(_message.Message):
    __slots__ = ("id", "request", "answer", "error_code", "error_details", "error_metadata")
    class ErrorMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
    ERROR_METADATA_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: ForwardRequest
    answer: ForwardChunk
    error_code: str
    error_details: str
    error_metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[ForwardRequest, _Mapping]] = ..., answer: _Optional[_Union[ForwardChunk, _Mapping]] = ..., error_code: _Optional[str] = ..., error_details: _Optional[str] = ..., error_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ForwardMuxBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ForwardMuxItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ForwardMuxItem, _Mapping]]] = ...) -> None: ...

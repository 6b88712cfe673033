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
    __slots__ = ("node_id", "cert_pem", "ca_cert_pem", "cluster_id", "secure_addr", "manager_id", "cert_chain_pem")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SECURE_ADDR_FIELD_NUMBER: _ClassVar[int]
    MANAGER_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cert_pem: str
    ca_cert_pem: str
    cluster_id: str
    secure_addr: str
    manager_id: str
    cert_chain_pem: str
    def __init__(self, node_id: _Optional[str] = ..., cert_pem: _Optional[str] = ..., ca_cert_pem: _Optional[str] = ..., cluster_id: _Optional[str] = ..., secure_addr: _Optional[str] = ..., manager_id: _Optional[str] = ..., cert_chain_pem: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("period", "renew_certificate", "trust_root")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    RENEW_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOT_FIELD_NUMBER: _ClassVar[int]
    period: float
    renew_certificate: bool
    trust_root: str
    def __init__(self, period: _Optional[float] = ..., renew_certificate: _Optional[bool] = ..., trust_root: _Optional[str] = ...) -> None: ...

class AssignmentsMessage(_message.Message):
    __slots__ = ("type", "payload")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    type: str
    payload: bytes
    def __init__(self, type: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

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

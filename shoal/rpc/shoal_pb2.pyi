from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

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

class Blob(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

"""Error texts exactly as dockerd (moby daemon/cluster + swarmkit controlapi) prints them.

Each constant or function returns the `message` of dockerd's JSON error body; the comment gives the HTTP
status dockerd answers with. Texts were read in moby/moby (daemon/cluster/*.go, errors.go, convert/*.go) and
moby/swarmkit (manager/controlapi/*.go) and checked against a real dockerd where noted "(seen)".

Errors that swarmkit raises travel over gRPC, so dockerd prints them with the gRPC prefix: use `rpc()`.
Errors raised by dockerd itself (lookups, JSON decoding, convert/*.go) have no prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

# --- gRPC wrapping ---------------------------------------------------------------------------------

INVALID_ARGUMENT = "InvalidArgument"
ALREADY_EXISTS = "AlreadyExists"
NOT_FOUND = "NotFound"
FAILED_PRECONDITION = "FailedPrecondition"
UNIMPLEMENTED = "Unimplemented"
UNKNOWN = "Unknown"
PERMISSION_DENIED = "PermissionDenied"


def rpc(code: str, desc: str) -> str:
    """`rpc error: code = InvalidArgument desc = ...`, as dockerd shows a swarmkit gRPC error."""
    return f"rpc error: code = {code} desc = {desc}"


# --- not found (404; dockerd's own lookup by ID, name or ID prefix) (seen) -------------------------


def service_not_found(ref: str) -> str:
    return f"service {ref} not found"


def task_not_found(ref: str) -> str:
    return f"task {ref} not found"


def node_not_found(ref: str) -> str:
    return f"node {ref} not found"


def secret_not_found(ref: str) -> str:
    return f"secret {ref} not found"


def config_not_found(ref: str) -> str:
    return f"config {ref} not found"


def network_not_found(ref: str) -> str:
    return f"network {ref} not found"


def ambiguous(kind: str, ref: str, matches: int) -> str:
    """400: more than one object matches an ID prefix, e.g. `service ab is ambiguous (2 matches found)`."""
    return f"{kind} {ref} is ambiguous ({matches} matches found)"


# --- name conflicts (409) (seen) -------------------------------------------------------------------


def service_name_conflict(name: str) -> str:
    return rpc(ALREADY_EXISTS, f"name conflicts with an existing object: service {name} already exists")


def name_conflict(kind: str, name: str) -> str:
    """A secret or config name taken (swarmkit's AlreadyExists)."""
    return rpc(ALREADY_EXISTS, f"{kind} {name} already exists")


def network_name_conflict(name: str) -> str:
    """409; raised by dockerd before it asks swarmkit."""
    return f"network with name {name} already exists"


def ingress_already_present(network_id: str) -> str:
    """409."""
    return rpc(ALREADY_EXISTS, f"ingress network ({network_id}) is already present")


# --- in use (400) (seen) -----------------------------------------------------------------------------


def _in_use(kind: str, name: str, service_names: Sequence[str]) -> str:
    noun = "service" if len(service_names) == 1 else "services"
    return rpc(
        INVALID_ARGUMENT, f"{kind} '{name}' is in use by the following {noun}: {', '.join(service_names)}"
    )


def secret_in_use(name: str, service_names: Sequence[str]) -> str:
    """`rpc error: code = InvalidArgument desc = secret 'x' is in use by the following service: y`."""
    return _in_use("secret", name, service_names)


def config_in_use(name: str, service_names: Sequence[str]) -> str:
    return _in_use("config", name, service_names)


def network_in_use_by_service(network_id: str, service_id: str) -> str:
    """400 (FailedPrecondition maps to 400 in dockerd)."""
    return rpc(FAILED_PRECONDITION, f"network {network_id} is in use by service {service_id}")


def network_in_use_by_task(network_id: str, task_id: str) -> str:
    return rpc(FAILED_PRECONDITION, f"network {network_id} is in use by task {task_id}")


def ingress_in_use(service_id: str) -> str:
    return rpc(
        FAILED_PRECONDITION, f"ingress network cannot be removed because service {service_id} depends on it"
    )


def predefined_network(name: str, network_id: str) -> str:
    """`docker network rm` of a predefined network (swarmkit's text, FailedPrecondition)."""
    return rpc(
        FAILED_PRECONDITION,
        f"network {name} ({network_id}) is a swarm predefined network and cannot be removed",
    )


# --- references from a service spec (400) ----------------------------------------------------------


def secrets_not_found(names: Sequence[str]) -> str:
    """`secret not found: s1` / `secrets not found: a, b` (seen)."""
    noun = "secret" if len(names) == 1 else "secrets"
    return rpc(INVALID_ARGUMENT, f"{noun} not found: {', '.join(names)}")


def configs_not_found(names: Sequence[str]) -> str:
    noun = "config" if len(names) == 1 else "configs"
    return rpc(INVALID_ARGUMENT, f"{noun} not found: {', '.join(names)}")


def cannot_attach_ingress(network_name: str) -> str:
    return rpc(
        INVALID_ARGUMENT, f'Service cannot be explicitly attached to the ingress network "{network_name}"'
    )


def port_in_use_host(port: int, service_name: str, service_id: str) -> str:
    return rpc(
        INVALID_ARGUMENT,
        f"port '{port}' is already in use by service '{service_name}' ({service_id}) "
        "as a host-published port",
    )


def port_in_use_ingress(port: int, service_name: str, service_id: str) -> str:
    return rpc(
        INVALID_ARGUMENT,
        f"port '{port}' is already in use by service '{service_name}' ({service_id}) as an ingress port",
    )


NO_INGRESS = rpc(FAILED_PRECONDITION, "service needs ingress network, but no ingress network is present")

# --- service updates ---------------------------------------------------------------------------------

UPDATE_OUT_OF_SEQUENCE = rpc(UNKNOWN, "update out of sequence")  # 500 (seen)
MODE_CHANGE_NOT_ALLOWED = rpc(UNIMPLEMENTED, "service mode change is not allowed")  # 501 (seen)
RENAME_NOT_SUPPORTED = rpc(UNIMPLEMENTED, "renaming services is not supported")  # 501 (seen)
NETWORK_UPDATE_NOT_SUPPORTED = rpc(
    UNIMPLEMENTED, "networks must be migrated to TaskSpec before being changed"
)
ONLY_LABELS_UPDATABLE = rpc(INVALID_ARGUMENT, "only updates to Labels are allowed")  # secret/config update


def no_previous_spec(service_id: str) -> str:
    """400, `docker service rollback` of a service never updated (swarmkit's text)."""
    return rpc(FAILED_PRECONDITION, f"service {service_id} does not have a previous spec")


def invalid_version(raw: str, kind: str = "service") -> str:
    """400 for `?version=abc` (seen; `kind` is "swarm" on /swarm/update). Go's strconv error text."""
    return f"invalid {kind} version '{raw}': strconv.ParseUint: parsing \"{raw}\": invalid syntax"


def version_out_of_range(raw: str, kind: str = "service") -> str:
    """400 for `?version=` past 2^64-1 (strconv.ParseUint's range error)."""
    return f"invalid {kind} version '{raw}': strconv.ParseUint: parsing \"{raw}\": value out of range"


def invalid_registry_auth_from(v: str) -> str:
    return f"invalid registryAuthFrom '{v}'"


def unrecognized_rollback(v: str) -> str:
    return f"unrecognized rollback option {v}"


# --- nodes -------------------------------------------------------------------------------------------

DEMOTE_LAST_MANAGER = rpc(FAILED_PRECONDITION, "attempting to demote the last manager of the swarm")
QUORUM_LOSS = rpc(
    FAILED_PRECONDITION, "can't remove member from the raft: this would result in a loss of quorum"
)


def node_is_manager(node_id: str) -> str:
    return rpc(
        FAILED_PRECONDITION,
        f"node {node_id} is a cluster manager and is a member of the raft cluster. "
        "It must be demoted to worker before removal",
    )


def node_not_down(node_id: str) -> str:
    return rpc(FAILED_PRECONDITION, f"node {node_id} is not down and can't be removed")


# --- swarm state (503 unless noted) (errors.go) ------------------------------------------------------

NO_SWARM = "This node is not part of a swarm"
SWARM_EXISTS = (
    'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.'
)
SWARM_LOCKED = (
    "Swarm is encrypted and needs to be unlocked before it can be used. "
    'Please use "docker swarm unlock" to unlock it.'
)
SWARM_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)
NOT_A_SWARM_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
    "to connect this node to "
    "swarm and try again."
)
# 503: a request relayed to the leader lost the leader before its answer was whole (the Go gRPC client's text
# for a connection that closed under a call); the write may or may not have been made.
LEADER_LOST_MID_ANSWER = "rpc error: code = Unavailable desc = transport is closing"
SWARM_JOIN_TIMEOUT = (
    "Timeout was reached before node joined. The attempt to join the swarm will continue in the background. "
    'Use the "docker info" command to see the current swarm status of your node.'
)
SWARM_CERTS_EXPIRED = "Swarm certificates have expired. To replace them, leave the swarm and join again."
INVALID_UNLOCK_KEY = "swarm could not be unlocked: invalid key provided"  # 400
NOT_LOCKED = "swarm is not locked"  # 409
CLUSTER_NAME_CHANGE = rpc(INVALID_ARGUMENT, "modification of cluster name is not allowed")
NEGATIVE_HEARTBEAT = rpc(INVALID_ARGUMENT, "heartbeat time period cannot be a negative duration")


def min_cert_expiry(minimum: str = "1h0m0s") -> str:
    return rpc(INVALID_ARGUMENT, f"minimum certificate expiry time is: {minimum}")


# --- request decoding (400) --------------------------------------------------------------------------

EMPTY_BODY = "invalid JSON: got EOF while reading request body"
CONTENT_AFTER_JSON = "unexpected content after JSON"


def invalid_json(detail: str) -> str:
    return f"invalid JSON: {detail}"


def not_json_content_type(ct: str) -> str:
    return f"unsupported Content-Type header ({ct}): must be 'application/json'"

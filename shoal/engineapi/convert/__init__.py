"""Explicit converters between Engine API JSON and Shoal's domain model (see service.py, cluster.py).

Wire -> domain functions validate as dockerd + swarmkit do and raise `InvalidArgument` (400) with their
texts; domain -> wire functions produce exactly the JSON dockerd shows (field names, omitempty, Go times).
"""

from shoal.engineapi.convert._wire import go_time, parse_go_time
from shoal.engineapi.convert.cluster import (
    InitRequest,
    JoinRequest,
    NetworkCreate,
    config_spec_from_wire,
    config_to_wire,
    init_request_from_wire,
    init_spec_onto,
    join_request_from_wire,
    network_create_from_wire,
    network_swarm_object,
    network_to_wire,
    node_spec_from_wire,
    node_spec_to_wire,
    node_to_wire,
    secret_spec_from_wire,
    secret_to_wire,
    swarm_spec_from_wire,
    swarm_spec_to_wire,
    swarm_to_wire,
)
from shoal.engineapi.convert.service import (
    service_spec_from_wire,
    service_spec_to_wire,
    service_to_wire,
    task_spec_to_wire,
    task_to_wire,
    with_defaults,
)

__all__ = [
    "InitRequest",
    "JoinRequest",
    "NetworkCreate",
    "config_spec_from_wire",
    "config_to_wire",
    "go_time",
    "init_request_from_wire",
    "init_spec_onto",
    "join_request_from_wire",
    "network_create_from_wire",
    "network_swarm_object",
    "network_to_wire",
    "node_spec_from_wire",
    "node_spec_to_wire",
    "node_to_wire",
    "parse_go_time",
    "secret_spec_from_wire",
    "secret_to_wire",
    "service_spec_from_wire",
    "service_spec_to_wire",
    "service_to_wire",
    "swarm_spec_from_wire",
    "swarm_spec_to_wire",
    "swarm_to_wire",
    "task_spec_to_wire",
    "task_to_wire",
    "with_defaults",
]

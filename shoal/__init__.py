"""Shoal: a container orchestrator that speaks the Docker Swarm API."""

import os

# A manager forks a child to encode each Raft snapshot (shoal.manager.raft.forked). With gRPC's fork support on,
# its at-fork handlers start EventEngine threads in that child, which then abort on the descriptors the child
# closes: 4 children in 10 failed beside a busy server. Read when gRPC initialises, so set before any import of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__version__ = "0.1.0"

"""Shoal's gRPC services: the servers (server, raft), their clients (client) and what both ends of a call read."""

# Trailing metadata of a call refused for now (shoal.errors.Deferred): the seconds after which to ask again.
RETRY_AFTER_KEY = "shoal-retry-after"

"""Shoal: a container orchestrator that speaks the Docker Swarm API."""

__version__ = "0.1.0"

"""Cron jobs: services run on a schedule by the leader (docs/cron.md)."""

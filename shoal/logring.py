"""The daemon's newest log lines kept in memory, so `GET /_shoal/log` can hand them to `shoal diagnose` without
knowing where the daemon's stderr goes."""

from __future__ import annotations

import collections
import logging
import threading

CAPACITY = 2000


class LogRing(logging.Handler):
    """A logging handler keeping the last `capacity` formatted records."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__()
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._guard:
            self._lines.append(line)

    def tail(self, n: int) -> list[str]:
        with self._guard:
            lines = list(self._lines)
        return lines[-n:] if n > 0 else []


_ring: LogRing | None = None


def install(fmt: str, capacity: int = CAPACITY) -> LogRing:
    """Attach the ring to the root logger (once per process) with the daemon's log format."""
    global _ring
    if _ring is None:
        _ring = LogRing(capacity)
        _ring.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(_ring)
    return _ring


def tail(n: int) -> list[str] | None:
    """The newest `n` lines, or None when this process keeps no ring (not a `shoal daemon`)."""
    return None if _ring is None else _ring.tail(n)

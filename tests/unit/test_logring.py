"""The daemon's in-memory log ring behind GET /_shoal/log."""

from __future__ import annotations

import logging

from shoal.logring import LogRing


def test_ring_keeps_the_newest_lines_formatted() -> None:
    ring = LogRing(capacity=3)
    ring.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("shoal.test.logring")
    log.addHandler(ring)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(5):
            log.info("line %d", i)
    finally:
        log.removeHandler(ring)
    assert ring.tail(10) == [f"INFO shoal.test.logring: line {i}" for i in (2, 3, 4)]
    assert ring.tail(1) == ["INFO shoal.test.logring: line 4"]
    assert ring.tail(0) == []

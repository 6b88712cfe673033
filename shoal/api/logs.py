"""A task's log lines and what a reader asks for: the executors produce them, the agent streams them to the
log broker, the Engine API writes them out in dockerd's framing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class LogOptions:
    follow: bool = False
    stdout: bool = True
    stderr: bool = True
    tail: int | None = None  # None: all lines
    since: float = 0.0  # seconds since the epoch; 0: from the beginning
    until: float = 0.0  # 0: no end
    timestamps: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    stream: str  # "stdout" | "stderr"
    timestamp: float
    data: bytes  # one line, including its trailing newline when it had one

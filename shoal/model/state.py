"""Task states: an ordered enum used as a Lamport clock, and the table of allowed moves.

A task's observed state only moves forward. The orchestrator writes `desired_state`; the allocator moves
NEW->PENDING, the scheduler PENDING->ASSIGNED, and from then on only the agent advances `status.state`.
Gaps of 64 leave room for future states, as in swarmkit.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Final


class TaskState(IntEnum):
    NEW = 0
    PENDING = 64
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    @property
    def wire(self) -> str:
        return self.name.lower()

    @classmethod
    def from_wire(cls, s: str) -> TaskState:
        if s == "allocated":
            return cls.PENDING
        return cls[s.upper()]

    @property
    def terminal(self) -> bool:
        return self >= TaskState.COMPLETE


_FINAL = frozenset({TaskState.COMPLETE, TaskState.SHUTDOWN, TaskState.FAILED, TaskState.REJECTED,
                    TaskState.ORPHANED, TaskState.REMOVE})


def _forward(s: TaskState, *extra: TaskState) -> frozenset[TaskState]:
    return frozenset(t for t in TaskState if t > s) | frozenset(extra)


# Every edge a task's observed state may take. A task may skip forward (an agent that restarts reports
# the state it finds); it never moves back. Terminal states only move to the bookkeeping states.
ALLOWED: Final[Mapping[TaskState, frozenset[TaskState]]] = {
    s: (_forward(s) if s < TaskState.COMPLETE
        else frozenset(t for t in (TaskState.REMOVE, TaskState.ORPHANED) if t > s))
    for s in TaskState
}


class InvalidTransition(ValueError):
    def __init__(self, cur: TaskState, new: TaskState) -> None:
        super().__init__(f"invalid task state transition {cur.name} -> {new.name}")
        self.cur = cur
        self.new = new


def check_transition(cur: TaskState, new: TaskState) -> None:
    if new == cur:
        return
    if new not in ALLOWED[cur]:
        raise InvalidTransition(cur, new)


def is_final(s: TaskState) -> bool:
    return s in _FINAL

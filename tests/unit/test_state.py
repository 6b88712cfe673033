"""The task state table: forward-only moves, terminal states only to bookkeeping states, wire names."""

from __future__ import annotations

import pytest

from shoal.model.state import ALLOWED, InvalidTransition, TaskState, check_transition, is_final


def test_states_are_ordered_like_swarmkit() -> None:
    order = [TaskState.NEW, TaskState.PENDING, TaskState.ASSIGNED, TaskState.ACCEPTED, TaskState.PREPARING,
             TaskState.READY, TaskState.STARTING, TaskState.RUNNING, TaskState.COMPLETE, TaskState.SHUTDOWN,
             TaskState.FAILED, TaskState.REJECTED, TaskState.REMOVE, TaskState.ORPHANED]
    assert order == sorted(order)
    assert [int(s) for s in order] == [0, 64, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 800, 832]


@pytest.mark.parametrize("cur", list(TaskState))
def test_never_backwards(cur: TaskState) -> None:
    for new in TaskState:
        if new < cur:
            with pytest.raises(InvalidTransition):
                check_transition(cur, new)


def test_forward_moves_before_terminal_are_allowed_including_skips() -> None:
    check_transition(TaskState.ASSIGNED, TaskState.RUNNING)  # an agent that restarted reports what it finds
    check_transition(TaskState.PENDING, TaskState.ASSIGNED)
    check_transition(TaskState.RUNNING, TaskState.FAILED)
    check_transition(TaskState.RUNNING, TaskState.RUNNING)  # a repeated report is not a move


@pytest.mark.parametrize("term", [TaskState.COMPLETE, TaskState.SHUTDOWN, TaskState.FAILED, TaskState.REJECTED])
def test_terminal_states_only_to_bookkeeping(term: TaskState) -> None:
    assert ALLOWED[term] == {TaskState.REMOVE, TaskState.ORPHANED}
    with pytest.raises(InvalidTransition):
        check_transition(term, TaskState.FAILED if term != TaskState.FAILED else TaskState.REJECTED)
    assert is_final(term) and term.terminal


def test_wire_names() -> None:
    assert TaskState.RUNNING.wire == "running"
    assert TaskState.from_wire("shutdown") is TaskState.SHUTDOWN
    assert TaskState.from_wire("allocated") is TaskState.PENDING  # the API's extra state
    assert not TaskState.STARTING.terminal

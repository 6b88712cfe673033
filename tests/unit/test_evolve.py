"""`evolve` copies a frozen dataclass as `dataclasses.replace` does, one generated copier per set of changed
fields; `maker` builds one as its constructor does, from every field."""

from __future__ import annotations

import dataclasses

import pytest

from shoal.model.evolve import evolve, maker
from shoal.model.objects import Annotations, Meta, Task, TaskSpec, TaskStatus
from shoal.model.state import TaskState


def sample() -> Task:
    return Task(id="t1", meta=Meta(version=3, created_at=1.0, updated_at=2.0), service_id="s1", slot=2,
                node_id="n1", status=TaskStatus(state=TaskState.RUNNING), annotations=Annotations(labels={"a": "b"}))


def test_evolve_is_replace_for_each_set_of_changed_fields() -> None:
    t = sample()
    st = TaskStatus(state=TaskState.ASSIGNED)
    for changes in ({}, {"node_id": "n2"}, {"node_id": "n2", "status": st}, {"status": st, "node_id": "n3"},
                    {"endpoint": None, "slot": 0}):
        got = evolve(t, **changes)
        assert got == dataclasses.replace(t, **changes) and got is not t
    assert t == sample()  # the original is untouched
    with pytest.raises(TypeError, match="no field"):
        evolve(t, nope=1)


def test_maker_builds_what_the_constructor_builds_and_wants_every_field() -> None:
    t = sample()
    make = maker(Task)
    fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(Task)}
    assert make(**fields) == t
    del fields["spec"]
    with pytest.raises(TypeError):
        make(**fields)
    assert maker(TaskSpec)(**{f.name: getattr(TaskSpec(), f.name) for f in dataclasses.fields(TaskSpec)}) \
        == TaskSpec()

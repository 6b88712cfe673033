"""Runs the filters against nodes for one task and explains why nodes were refused (swarmkit pipeline.go)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shoal.manager.scheduler.filters import Filter, default_filters, is_static
from shoal.manager.scheduler.nodeinfo import NodeInfo
from shoal.model.objects import Task

NO_SUITABLE_NODE = "no suitable node"


class Pipeline:
    def __init__(self, filters: Sequence[Filter] | None = None) -> None:
        self.filters: list[Filter] = list(filters) if filters is not None else default_filters()
        self.enabled: list[bool] = [False] * len(self.filters)
        self.failures: list[int] = [0] * len(self.filters)

    def set_task(self, task: Task) -> None:
        """Prepare every filter for `task` and forget earlier failure counts."""
        self.enabled = [f.set_task(task) for f in self.filters]
        self.failures = [0] * len(self.filters)

    def process(self, node: NodeInfo) -> bool:
        """Whether `node` passes every enabled filter; the first filter that refuses it is charged."""
        for i, f in enumerate(self.filters):
            if self.enabled[i] and not f.check(node):
                self.failures[i] += 1
                return False
        return True

    def checks(self, static: bool) -> list[Callable[[NodeInfo], bool]]:
        """The enabled filters' predicates that are (or are not) static, in pipeline order."""
        return [f.check for i, f in enumerate(self.filters) if self.enabled[i] and is_static(f) == static]

    def explain(self) -> str:
        """`no suitable node (reason; reason)`, most frequent reason first; ties keep filter order."""
        order = sorted(range(len(self.filters)), key=lambda i: -self.failures[i])
        reasons = [self.filters[i].explain(self.failures[i]) for i in order if self.failures[i] > 0]
        if not reasons:
            return NO_SUITABLE_NODE
        return f"{NO_SUITABLE_NODE} ({'; '.join(reasons)})"

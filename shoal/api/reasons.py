"""Why a task ended or was replaced, as a small fixed set of categories: the label of the restart and failure
metrics (never a free text, so their label sets stay bounded), and what a web view or CLI can group by.

The executors word their errors as dockerd and swarmkit do ("task: non-zero exit (N)", "... dockerexec:
unhealthy container") and mark an OOM kill in the status's container part (`ContainerStatus.oom_killed`); a task
on a node that went down is told by the orchestrator, not by a status.
"""

from __future__ import annotations

from shoal.model.objects import Task
from shoal.model.state import TaskState

COMPLETED = "completed"  # exited 0 (restarted under condition "any")
EXIT_NONZERO = "exit_nonzero"  # its process exited with a non-zero code
UNHEALTHY = "unhealthy"  # its health check failed (the executor stopped it)
OOM_KILLED = "oom_killed"  # the kernel's OOM killer ended it (its memory limit was hit)
REJECTED = "rejected"  # the executor refused it before it started (image, spec, resources)
NODE_DOWN = "node_down"  # its node went down or was removed
SHUTDOWN = "shutdown"  # stopped on request, or ended in a state other than the above
FAILED = "failed"  # failed after it started, for any other reason (an executor error)

REASONS = (COMPLETED, EXIT_NONZERO, UNHEALTHY, OOM_KILLED, REJECTED, NODE_DOWN, SHUTDOWN, FAILED)


def end_reason(t: Task) -> str:
    """The category of an ended task (COMPLETE, FAILED, REJECTED, SHUTDOWN, ORPHANED ...)."""
    st = t.status
    if st.state == TaskState.COMPLETE:
        return COMPLETED
    if st.state == TaskState.REJECTED:
        return REJECTED
    if st.state == TaskState.FAILED:
        err = st.err or ""
        if st.container is not None and st.container.oom_killed:
            return OOM_KILLED
        if "unhealthy container" in err:
            return UNHEALTHY
        if "non-zero exit" in err:
            return EXIT_NONZERO
        return FAILED
    return SHUTDOWN

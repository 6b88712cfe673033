"""The one exception hierarchy of Shoal.

    ShoalError
    ├── InvalidArgument      bad input from a client            -> HTTP 400
    ├── NotFound             no such object                     -> HTTP 404
    ├── Conflict             name taken, in use, stale version  -> HTTP 409
    │   └── SequenceConflict update built on an old version (dockerd answers 500 "update out of sequence")
    ├── NotAcceptable        request not acceptable in state    -> HTTP 406
    ├── Unavailable          not a manager / not in a swarm     -> HTTP 503
    │   ├── NotLeader        not the Raft leader (carries where the leader is, to forward or redirect)
    │   └── Deferred         taken later, not now (carries in how many seconds)
    ├── Forbidden            refused by policy                  -> HTTP 403
    ├── NotImplementedFeature not supported by Shoal            -> HTTP 501
    └── ExecutorError        raised by executors
        ├── TemporaryError   retry the same step later
        └── FatalError       the task cannot make progress

Every boundary (HTTP, executor, gRPC later) translates from its own library's exceptions into these,
and the HTTP layer translates these into dockerd's status codes and `{"message": ...}` bodies.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)

_GRPC_STATUS = {
    "InvalidArgument": 400, "NotFound": 404, "AlreadyExists": 409, "PermissionDenied": 403,
    "FailedPrecondition": 400, "Unauthenticated": 401, "OutOfRange": 400, "Unimplemented": 501,
    "Unavailable": 503,
}


class ShoalError(Exception):
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # A plain ShoalError carrying a swarmkit-style "rpc error: code = X desc = ..." text gets the
        # status dockerd derives from that gRPC code.
        if type(self) is ShoalError and message.startswith("rpc error: code = "):
            code = message[len("rpc error: code = "):].split(" ", 1)[0]
            self.status = _GRPC_STATUS.get(code, 500)


class InvalidArgument(ShoalError):
    status = 400


class NotFound(ShoalError):
    status = 404


class Conflict(ShoalError):
    status = 409


class SequenceConflict(ShoalError):
    # dockerd maps swarmkit's ErrSequenceConflict to a 500 with this text; the CLI retries on it.
    status = 500

    def __init__(self, message: str = "update out of sequence") -> None:
        super().__init__(message)


class NotAcceptable(ShoalError):
    status = 406


class Unavailable(ShoalError):
    status = 503


class NotLeader(Unavailable):
    """This manager is not the Raft leader; `leader_addr` is where the leader's node RPC listens, when known."""

    def __init__(self, message: str, leader_addr: str = "", leader_id: str = "") -> None:
        super().__init__(message)
        self.leader_addr = leader_addr
        self.leader_id = leader_id


class Deferred(Unavailable):
    """Not now: the same request is taken in `retry_after` seconds (a node registering while the leader takes
    registrations at its rate)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(ShoalError):
    status = 403


class NotImplementedFeature(ShoalError):
    status = 501


class ExecutorError(ShoalError):
    pass


class TemporaryError(ExecutorError):
    pass


class FatalError(ExecutorError):
    pass


NOT_A_MANAGER = (
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect "
    "this node to swarm and try again."
)
NOT_IN_SWARM = NOT_A_MANAGER
WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)


def fresh(e: E) -> E:
    """A new instance of `e` (type, arguments, attributes; no traceback) for one of several waiters.

    One instance raised by many tasks gathers every raiser's frames into its one traceback, and those frames
    keep their locals alive (a failed batch of task reports, a whole transaction) in reference cycles that
    only a full collection frees: with a leadership change failing thousands of waiters at once, that was
    hundreds of thousands of objects per election. Each waiter gets its own instance instead.
    """
    try:
        c = type(e).__new__(type(e))
    except TypeError:  # a type that needs its arguments to be built (an exception group): share it
        return e
    c.args = e.args
    c.__dict__.update(e.__dict__)
    return c


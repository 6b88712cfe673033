"""gRPC's threads run at a lower CPU priority than the daemon's own (shoal.threadprio)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from unittest import mock

import grpc
import pytest

from shoal import threadprio
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg


def nice_by_comm() -> dict[int, tuple[str, int]]:
    out = {}
    for t in os.listdir("/proc/self/task"):
        comm = threadprio._comm(int(t))
        with contextlib.suppress(OSError):
            out[int(t)] = (comm, os.getpriority(os.PRIO_PROCESS, int(t)))
    return out


@pytest.fixture
def restore_nice() -> Iterator[None]:
    before = nice_by_comm()
    yield
    for tid, (_, nice) in before.items():  # the rest of this test process runs as it did (root may lower it)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


class _Echo(pbg.ControlServicer):
    async def GetCluster(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.Blob:
        return pb.Blob(data=b"x")


async def test_grpc_threads_get_a_lower_priority_and_the_others_keep_theirs(restore_nice: None) -> None:
    server = grpc.aio.server()
    pbg.add_ControlServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mine = threading.Event()
    worker = threading.Thread(target=mine.wait, name="not grpc")  # a thread of the daemon's own
    worker.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert (await pbg.ControlStub(ch).GetCluster(pb.Empty())).data == b"x"  # gRPC's threads exist now
        base = os.getpriority(os.PRIO_PROCESS, 0)
        before = nice_by_comm()
        grpc_tids = {t for t, (comm, _) in before.items() if comm in threadprio.GRPC_THREADS}
        assert grpc_tids, before
        changed = threadprio.demote_rpc_threads(base)
        after = nice_by_comm()
        want = min(base + threadprio.RPC_NICE, 19)
        assert changed == sum(1 for t in grpc_tids if t in after and before[t][1] < want)
        for tid, (comm, nice) in after.items():
            if tid in grpc_tids:
                assert nice == want, (comm, nice)
            else:
                assert nice == before[tid][1], (comm, nice)  # this thread, the worker, the executor's
        assert threadprio.demote_rpc_threads(base) == 0  # nothing left to change
        seen: set[int] = set()
        threadprio.demote_rpc_threads(base, seen)
        assert set(nice_by_comm()) <= seen  # every thread was looked at once ...
        before, read = set(seen), []
        with mock.patch.object(threadprio, "_comm", side_effect=lambda tid: read.append(tid) or ""):
            threadprio.demote_rpc_threads(base, seen)
        assert not set(read) & before  # ... and not again (only threads started since are)
    finally:
        mine.set()
        worker.join()
        await server.stop(None)

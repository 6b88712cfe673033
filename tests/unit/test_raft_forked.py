"""Snapshots encoded in a forked child (shoal.manager.raft.forked): the bytes come back whole, the child keeps
none of the parent's descriptors, a failed child is said, and a cancelled encoding leaves no child behind."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from pathlib import Path

import grpc
import pytest

from shoal.manager.raft import forked
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from tests.support.wait import eventually
from tests.unit.test_raft_compaction import ENTRY, Counter, open_node


def children() -> set[int]:
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out |= {int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()}
        except OSError:
            pass
    return out


async def test_the_child_encodes_and_keeps_none_of_the_parents_descriptors() -> None:
    a, b = socket.socketpair()  # a connection of the parent's: the child must not hold it open
    payload = random.Random(3).randbytes(5 << 20)  # more than a pipe buffer holds

    def source() -> bytes:
        try:
            os.fstat(a.fileno())
        except OSError:
            return b"closed:" + payload
        return b"open:" + payload

    try:
        before = children()
        assert await forked.encode_in_child(source) == b"closed:" + payload
        assert children() == before
    finally:
        a.close()
        b.close()


async def test_a_failing_child_is_said() -> None:
    def source() -> bytes:
        raise ValueError("no")

    with pytest.raises(forked.ChildFailed, match="ValueError: no"):
        await forked.encode_in_child(source)


async def test_a_cancelled_encoding_leaves_no_child() -> None:
    def source() -> bytes:
        time.sleep(3600)
        return b""

    before = children()
    task = asyncio.ensure_future(forked.encode_in_child(source))
    await eventually(lambda: children() != before, 10, what="the child forked")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children() == before


class BigCounter(Counter):
    """A state machine whose snapshot is large next to the entries: 1 MiB."""

    def save(self) -> bytes:
        return super().save().ljust(1 << 20)

    def restore(self, data: bytes, index: int) -> None:
        super().restore(data.rstrip(), index)


async def test_a_large_store_is_not_encoded_again_before_half_its_size_was_logged(tmp_path: Path) -> None:
    """snapshot_bytes is 256 KiB (tests.unit.test_raft_compaction), the snapshot 1 MiB: after the first one, the
    next waits for 512 KiB of log, not 256 KiB."""
    from tests.unit.raft_support import bootstrap_dir

    bootstrap_dir(tmp_path)
    node, _sm, storage = await open_node(tmp_path, in_thread=False, sm=BigCounter())
    rng = random.Random(5)
    written = 0
    for _ in range(150):  # 3 MiB of entries
        await node.propose(rng.randbytes(ENTRY))
        written += ENTRY
    taken = node.snapshots_taken
    await node.stop()
    storage.close()
    assert 2 <= taken <= written // (512 << 10) + 1, taken  # by the bound alone it would be ~12


async def test_a_node_snapshots_in_a_child_and_restarts_from_it(tmp_path: Path) -> None:
    from tests.unit.raft_support import bootstrap_dir

    bootstrap_dir(tmp_path)
    node, _sm, storage = await open_node(tmp_path, in_thread=True, in_child=True)
    rng = random.Random(9)
    for _ in range(60):
        await node.propose(rng.randbytes(ENTRY))
    await node.stop()  # waits for a snapshot being written
    storage.close()
    assert node.snapshots_taken >= 1
    node2, sm2, storage2 = await open_node(tmp_path, in_thread=True, in_child=True)
    assert sm2.count == 60 and sm2.applied_here < 60  # restored from a snapshot the child encoded
    await node2.stop()
    storage2.close()


class _Echo(pbg.ControlServicer):
    async def GetCluster(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.Blob:
        return pb.Blob(data=b"x")


async def test_children_encode_beside_a_busy_grpc_server() -> None:
    """gRPC's fork handlers would start threads in the child that abort on its closed descriptors."""
    assert os.environ.get("GRPC_ENABLE_FORK_SUPPORT") == "0"  # set by importing shoal, before gRPC starts
    server = grpc.aio.server()
    pbg.add_ControlServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pbg.ControlStub(ch)

            async def load() -> None:
                while True:
                    await stub.GetCluster(pb.Empty())

            busy = [asyncio.ensure_future(load()) for _ in range(20)]
            try:
                for _ in range(8):
                    assert await forked.encode_in_child(lambda: b"y" * (8 << 20)) == b"y" * (8 << 20)
            finally:
                for t in busy:
                    t.cancel()
                await asyncio.gather(*busy, return_exceptions=True)
    finally:
        await server.stop(None)

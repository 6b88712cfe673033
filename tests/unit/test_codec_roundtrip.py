"""Everything the store accepts is what every replica replays: a property over every kind of object.

Objects are drawn from their type hints (every field, nested dataclasses, enums, tuples, mappings, optional
fields and the JSON pass-through values the API hands in), then written through a real store: the log entry
the store proposes must decode (as a follower decodes it) into objects equal to the ones written, and a store
replaying the log from disk must hold the same objects. Values the log cannot hold (NaN, infinities) are
refused before anything is proposed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.clock import SystemClock
from shoal.engineapi import convert as C
from shoal.errors import Conflict, InvalidArgument, ShoalError
from shoal.manager.validation import validate_service_spec
from shoal.model import codec, objects
from shoal.model.codec import Unencodable
from shoal.model.objects import Service
from shoal.store.memory import KINDS, MemoryStore, decode_entry, encode_actions
from shoal.testing.durable import raft_store
from shoal.testing.sim import memory_store

text = st.text(max_size=8)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@cache
def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is Any or tp is objects.JSON:
        return json_values
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = strategy_for(args[0]) if len(args) == 1 else json_values
        return st.none() | inner if type(None) in get_args(tp) else inner
    if origin is tuple:
        return st.lists(strategy_for(get_args(tp)[0]), max_size=2).map(tuple)
    if origin in (typing.Mapping, dict) or str(origin) == "<class 'collections.abc.Mapping'>":
        return st.dictionaries(text, strategy_for(get_args(tp)[1]), max_size=2)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, vars(objects))
        fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(tp)}
        return st.deferred(lambda: st.builds(tp, **fields))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(list(tp))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**63), 2**64 - 1)
    if tp is float:
        return finite
    if tp is str:
        return text
    if tp is bytes:
        return st.binary(max_size=8)
    raise AssertionError(f"no strategy for {tp!r}")


def any_object() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(*(strategy_for(cls).map(lambda o, k=kind: (k, o)) for kind, cls in KINDS.items()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_object())
def test_every_kind_encodes_decodes_equal(item: tuple[str, Any]) -> None:
    kind, obj = item
    part = encode_actions([("create", kind, obj)], verify=True)  # raises if it would not read back equal
    _, actions = decode_entry(b'{"format":1,"version":1,"actions":[%s]}' % part)
    assert actions == [("create", kind, obj)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(any_object(), min_size=1, max_size=4))
def test_store_replays_what_it_committed(tmp_path_factory: pytest.TempPathFactory,
                                         items: list[tuple[str, Any]]) -> None:
    import asyncio

    directory = tmp_path_factory.mktemp("replay")

    async def run() -> None:
        async with raft_store(directory, SystemClock()) as store:
            for kind, obj in items:
                existing = store.view().get(kind, obj.id)

                def put(tx: Any, o: Any = obj, old: Any = existing) -> None:
                    if old is not None:
                        tx.update(dataclasses.replace(o, meta=old.meta))
                    else:
                        tx.create(o)

                try:
                    await store.update(put, verify=True)  # Unencodable would fail the test
                except Conflict:  # a name taken by another drawn object: refused, not stored
                    continue
        async with raft_store(directory, SystemClock()) as replayed:
            for kind in KINDS:
                assert sorted(replayed.view().all(kind), key=lambda o: o.id) == \
                    sorted(store.view().all(kind), key=lambda o: o.id)

    asyncio.run(run())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_in_typed_and_untyped_fields(bad: float) -> None:
    typed = Service(id="s", spec=objects.ServiceSpec(update_config=objects.UpdateConfig(max_failure_ratio=bad)))
    untyped = Service(id="s", spec=objects.ServiceSpec(task_template=objects.TaskSpec(
        container=objects.ContainerSpec(mounts=({"Source": "a", "X": [1, bad]},)))))
    for obj in (typed, untyped):
        with pytest.raises(Unencodable) as e:
            encode_actions([("create", "service", obj)])
        assert e.value.status == 400
    with pytest.raises(Unencodable):
        codec.encode(objects.Task(id="t", restart_history=(1.0, bad)))


def test_a_value_that_reads_back_different_is_refused() -> None:
    # A tuple inside a pass-through value would read back as a list, and a non-string key as a string.
    for mounts in (({"Opts": (1, 2)},), ({1: "a"},)):
        obj = Service(id="s", spec=objects.ServiceSpec(task_template=objects.TaskSpec(
            container=objects.ContainerSpec(mounts=mounts))))
        with pytest.raises(Unencodable):
            encode_actions([("create", "service", obj)], verify=True)


async def test_a_refused_transaction_is_never_proposed(tmp_path: Path) -> None:
    async with raft_store(tmp_path, SystemClock()) as store:
        proposed: list[bytes] = []
        inner = store.proposer

        class Spy:
            async def propose(self, entry: bytes) -> int:
                proposed.append(entry)
                return await inner.propose(entry)

        store._proposer = Spy()
        bad = Service(id="s1", spec=objects.ServiceSpec(
            annotations=objects.Annotations(name="bad"),
            update_config=objects.UpdateConfig(max_failure_ratio=math.nan)))
        with pytest.raises(Unencodable):
            await store.update(lambda tx: tx.create(bad), verify=True)
        assert proposed == []
        good = Service(id="s2", spec=objects.ServiceSpec(annotations=objects.Annotations(name="good")))
        await store.update(lambda tx: tx.create(good))
        assert len(proposed) == 1
    async with raft_store(tmp_path, SystemClock()) as replayed:
        assert [s.id for s in replayed.view().all("service")] == ["s2"]


async def test_one_bad_transaction_of_a_group_commit_fails_alone(tmp_path: Path) -> None:
    import asyncio

    def create(sid: str, ratio: float) -> Any:
        return lambda tx: tx.create(Service(id=sid, spec=objects.ServiceSpec(
            annotations=objects.Annotations(name=sid), update_config=objects.UpdateConfig(max_failure_ratio=ratio))))

    async with raft_store(tmp_path, SystemClock()) as store:
        results = await asyncio.gather(store.update(create("a", 0.1)), store.update(create("b", math.inf)),
                                       store.update(create("c", 0.3)), return_exceptions=True)
    assert isinstance(results[1], Unencodable)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    async with raft_store(tmp_path, SystemClock()) as replayed:
        assert sorted(s.id for s in replayed.view().all("service")) == ["a", "c"]


async def test_an_object_past_the_size_limit_is_refused() -> None:
    from shoal.store.memory import MAX_OBJECT_BYTES, ObjectTooLarge

    store: MemoryStore = memory_store(SystemClock())
    big = Service(id="s1", spec=objects.ServiceSpec(annotations=objects.Annotations(
        name="big", labels={"x": "a" * (MAX_OBJECT_BYTES + 1)})))
    with pytest.raises(ObjectTooLarge) as e:
        await store.update(lambda tx: tx.create(big))
    assert e.value.status == 400 and "service big is too large for the cluster store" in e.value.message
    assert store.view().all("service") == []


async def test_a_transaction_of_many_objects_is_not_limited(tmp_path: Path) -> None:
    """The tasks of a large service are created in one transaction, past the size of one object."""
    from shoal.store.memory import MAX_OBJECT_BYTES

    label = {"x": "a" * 1000}
    n = MAX_OBJECT_BYTES // 1000 + 100

    def create(tx: Any) -> None:
        for i in range(n):
            tx.create(objects.Task(id=f"t{i}", service_id="s1", annotations=objects.Annotations(labels=label)))

    async with raft_store(tmp_path, SystemClock()) as store:
        await store.update(create)
    async with raft_store(tmp_path, SystemClock()) as replayed:
        assert len(replayed.view().all("task")) == n


wire_number = st.one_of(st.integers(-(2**70), 2**70), finite, st.sampled_from([1e300, -1e300, 1e-300]))
wire = st.one_of(json_values, wire_number)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right shape, sometimes anything JSON can carry."""
    return st.integers(0, 9).flatmap(lambda i: wire if i == 0 else plausible)


name = either(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True))
labels = either(st.dictionaries(text, text, max_size=3))
number = either(st.integers(0, 10**9))
ratio = either(st.floats(0, 1))
flag = either(st.booleans())
b64 = either(st.binary(min_size=1, max_size=16).map(lambda b: __import__("base64").b64encode(b).decode()))


def wire_obj(**keys: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=keys)


def _node(body: Any) -> Any:
    return objects.Node(id="n1", spec=C.node_spec_from_wire(body))


def _cluster(body: Any) -> Any:
    return objects.Cluster(id="c1", spec=C.swarm_spec_from_wire(body))


def _secret(body: Any) -> Any:
    return objects.Secret(id="s1", spec=C.secret_spec_from_wire(body))


def _config(body: Any) -> Any:
    return objects.Config(id="c1", spec=C.config_spec_from_wire(body))


def _network(body: Any) -> Any:
    return objects.Network(id="n1", spec=C.network_create_from_wire(body).spec)


CONVERTERS: dict[str, tuple[Any, st.SearchStrategy[dict[str, Any]]]] = {
    "node": (_node, wire_obj(Name=name, Labels=labels, Role=either(st.sampled_from(["manager", "worker"])),
                             Availability=either(st.sampled_from(["active", "pause", "drain"])))),
    "cluster": (_cluster, wire_obj(
        Name=name, Labels=labels, Orchestration=wire_obj(TaskHistoryRetentionLimit=number),
        Raft=wire_obj(SnapshotInterval=number, KeepOldSnapshots=number, LogEntriesForSlowFollowers=number,
                      HeartbeatTick=number, ElectionTick=number),
        Dispatcher=wire_obj(HeartbeatPeriod=number), CAConfig=wire_obj(NodeCertExpiry=number, ForceRotate=number),
        EncryptionConfig=wire_obj(AutoLockManagers=flag), TaskDefaults=wire)),
    "secret": (_secret, st.fixed_dictionaries({"Name": name, "Data": b64}, optional={"Labels": labels})),
    "config": (_config, st.fixed_dictionaries({"Name": name, "Data": b64}, optional={"Labels": labels})),
    "network": (_network, st.fixed_dictionaries({"Name": name}, optional={
        "Labels": labels, "Options": labels, "Attachable": flag, "Internal": flag,
        "IPAM": wire_obj(Options=labels, Config=st.lists(wire_obj(
            Subnet=either(st.sampled_from(["10.1.0.0/24", "10.2.0.0/16"])),
            Gateway=either(st.sampled_from(["10.1.0.1", "10.2.0.1"]))), max_size=2))})),
}


mount = st.fixed_dictionaries({"Type": st.sampled_from(["bind", "volume", "tmpfs"]), "Target": st.just("/data")},
                              optional={"Source": st.sampled_from(["/src", "vol"]), "ReadOnly": flag,
                                        "TmpfsOptions": wire_obj(SizeBytes=number, Mode=number)})


@settings(max_examples=200, deadline=None)
@given(ratio=ratio, replicas=number, parallelism=number, delay=number, labels=labels,
       mounts=either(st.lists(mount, max_size=2)), cpus=either(st.integers(10**6, 10**10)))
def test_what_the_service_converter_accepts_round_trips(ratio: Any, replicas: Any, parallelism: Any, delay: Any,
                                                        labels: Any, mounts: Any, cpus: Any) -> None:
    body = {"Name": "web", "Labels": labels,
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Mounts": mounts},
                             "Resources": {"Limits": {"NanoCPUs": cpus}}},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "UpdateConfig": {"MaxFailureRatio": ratio, "Parallelism": parallelism, "Delay": delay}}
    try:
        spec = C.service_spec_from_wire(body, api_version="1.47")
        validate_service_spec(spec)  # what the control API checks before anything is proposed
    except InvalidArgument:
        return  # refused at the API, as dockerd refuses it
    svc = Service(id="s1", spec=spec)
    part = encode_actions([("create", "service", svc)], verify=True)
    assert decode_entry(b'{"format":1,"version":1,"actions":[%s]}' % part)[1] == [("create", "service", svc)]


@pytest.mark.parametrize("kind", sorted(CONVERTERS))
def test_what_the_other_converters_accept_round_trips(kind: str) -> None:
    convert, bodies = CONVERTERS[kind]

    @settings(max_examples=150, deadline=None)
    @given(bodies)
    def check(body: dict[str, Any]) -> None:
        try:
            obj = convert(body)
        except ShoalError:
            return  # refused at the API, as dockerd refuses it (a 4xx, or one of its untyped 500s)
        part = encode_actions([("create", kind, obj)], verify=True)
        assert decode_entry(b'{"format":1,"version":1,"actions":[%s]}' % part)[1] == [("create", kind, obj)]

    check()

"""The harness itself, without any daemon: what normalisation replaces (and what it keeps), the diff's
pointers, and that deviations.yaml excuses only what it names."""

from __future__ import annotations

from pathlib import Path

from tests.differential.harness import (
    Answer,
    Deviation,
    Pair,
    Side,
    diff,
    load_deviations,
    normalise,
    stale_deviations,
)


def test_normalise_replaces_only_variable_parts() -> None:
    body = {
        "ID": "xst3hs63loegfgalaal6rcy1g", "Version": {"Index": 12}, "CreatedAt": "2026-12-07T05:29:18.1234Z",
        "Zero": "0001-01-01T00:00:00Z", "Addr": "10.0.0.5/24", "Listen": "127.0.0.1:24377", "Loop": "127.0.0.1",
        "Endpoint": {"Ports": [{"PublishedPort": 30001}, {"PublishedPort": 8080}]},
        "Engine": {"EngineVersion": "20.10.24+dfsg1"}, "Token": "SWMTKN-1-abc-def", "Name": "web",
        "Replicas": 3, "Architecture": "x86_64",
    }
    assert normalise(body) == {
        "ID": "<id>", "Version": "<version>", "CreatedAt": "<time>", "Zero": "0001-01-01T00:00:00Z",
        "Addr": "<addr>", "Listen": "127.0.0.1:<port>", "Loop": "127.0.0.1",
        "Endpoint": {"Ports": [{"PublishedPort": "<port>"}, {"PublishedPort": 8080}]},
        "Engine": {"EngineVersion": "<version>"}, "Token": "<secret>", "Name": "web", "Replicas": 3,
        "Architecture": "x86_64",
    }


def test_cli_normalisation() -> None:
    line = "mywdtvguysxs   dcli.1   shoal-test/busybox:latest   vm   Running   Running 2 seconds ago"
    assert normalise(line, cli=True) == "<id>  dcli.1  shoal-test/busybox:latest  vm  Running  Running <ago>"


def test_diff_pointers() -> None:
    a = {"Spec": {"Labels": {"a": "1"}, "Mode": "vip"}, "L": [1, 2]}
    b = {"Spec": {"Labels": {}, "Mode": "vip", "New": 1}, "L": [1, 3]}
    assert diff(a, b) == [("/Spec/Labels/a", "1", "<absent>"), ("/Spec/New", "<absent>", 1), ("/L/1", 2, 3)]


def test_only_listed_differences_are_excused() -> None:
    dev = Deviation("GET /nodes*", "*/Architecture", "uname's name")
    pair = Pair(Side("dockerd", "/nonexistent", Path("/tmp")),
                Side("shoal", "/nonexistent", Path("/tmp")), [dev])
    ref = [Answer("GET /nodes", 200, [{"Architecture": "x86_64", "Role": "manager"}])]
    got = [Answer("GET /nodes", 200, [{"Architecture": "amd64", "Role": "worker"}])]
    out = pair.compare_answers(ref, got)
    assert [d.pointer for d in out.differences] == ["/0/Architecture", "/0/Role"]
    assert [d.pointer for d in out.unexplained] == ["/0/Role"]


def test_every_deviation_has_a_reason() -> None:
    devs = load_deviations()
    assert devs and all(d.reason and d.request and d.pointer for d in devs)


def test_stale_deviations_are_found() -> None:
    used = Deviation("GET /nodes*", "*/Architecture", "uname's name")
    stale = Deviation("GET /nodes*", "*/Role", "no longer differs")
    unjudged = Deviation("GET /secrets*", "*", "its scenario did not run")
    pair = Pair(Side("dockerd", "/nonexistent", Path("/tmp")),
                Side("shoal", "/nonexistent", Path("/tmp")), [used, stale, unjudged])
    out = pair.compare_answers([Answer("GET /nodes", 200, [{"Architecture": "x86_64", "Role": "manager"}])],
                               [Answer("GET /nodes", 200, [{"Architecture": "amd64", "Role": "manager"}])])
    assert stale_deviations([used, stale, unjudged], [out]) == [stale]

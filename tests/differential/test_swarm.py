"""Swarm and node endpoints, compared with dockerd: before init, at init, and on the active swarm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.differential.harness import Answer, Pair, Side, assert_explained, same_cert, settled, signing_ca

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_before_and_at_init(pair: Pair) -> None:
    ref, got = pair.before_init  # type: ignore[attr-defined]
    assert_explained(pair.compare_answers(ref, got))
    # the reference took the operator's CA: the comparison is about a rotation that happened
    assert next(a.body for a in ref if a.label == "the trust root after init with a signing CA") == {"swarm": True}


def _version(s: Side) -> int:
    _, body, _ = s.request("GET", "/swarm")
    return int(body["Version"]["Index"])


def _swarm(s: Side) -> list[Answer]:
    out = [s.call("GET /swarm", "GET", "/swarm")]
    _, info, _ = s.request("GET", "/info")
    out.append(Answer("GET /info .Swarm", 200, {k: info["Swarm"].get(k) for k in (
        "LocalNodeState", "ControlAvailable", "Error", "RemoteManagers", "Nodes", "Managers", "Cluster")}))
    out.append(s.call("GET /swarm/unlockkey (autolock off)", "GET", "/swarm/unlockkey"))
    _, spec, _ = s.request("GET", "/swarm")
    v = spec["Version"]["Index"]
    out.append(s.call("POST /swarm/update (stale version)", "POST", "/swarm/update", spec["Spec"],
                      query={"version": v - 1}))
    out.append(s.call("POST /swarm/update (no version)", "POST", "/swarm/update", spec["Spec"]))
    out.append(s.call("POST /swarm/update (bad body)", "POST", "/swarm/update", raw=b"{nope",
                      query={"version": v}))
    labelled = dict(spec["Spec"], Labels={"a": "1", "b": "2"})
    out.append(s.call("POST /swarm/update (labels)", "POST", "/swarm/update", labelled, query={"version": v}))
    out.append(s.call("GET /swarm", "GET", "/swarm"))
    cleared = dict(labelled, Labels={})
    out.append(s.call("POST /swarm/update (labels {})", "POST", "/swarm/update", cleared,
                      query={"version": _version(s)}))
    out.append(s.call("GET /swarm (after labels {})", "GET", "/swarm"))
    out.append(s.call("POST /swarm/update (rotate worker token)", "POST", "/swarm/update",
                      cleared, query={"version": _version(s), "rotateWorkerToken": "true"}))
    out.append(s.call("POST /swarm/update (bad rotate flag)", "POST", "/swarm/update",
                      cleared, query={"version": _version(s), "rotateWorkerToken": "maybe"}))
    out.append(s.call("POST /swarm/update (negative history)", "POST", "/swarm/update",
                      dict(cleared, Orchestration={"TaskHistoryRetentionLimit": -1}),
                      query={"version": _version(s)}))
    out.append(s.call("POST /swarm/update (zero heartbeat)", "POST", "/swarm/update",
                      dict(cleared, Dispatcher={"HeartbeatPeriod": 0}), query={"version": _version(s)}))
    out.append(s.call("POST /swarm/unlock (not locked)", "POST", "/swarm/unlock", {"UnlockKey": "SWMKEY-1-x"}))
    out.append(s.call("POST /swarm/join (already in a swarm)", "POST", "/swarm/join",
                      {"ListenAddr": "127.0.0.1:1", "RemoteAddrs": ["127.0.0.1:2"], "JoinToken": "x"}))
    out.append(s.call("GET /swarm/nope", "GET", "/swarm/nope"))
    out.append(s.call("PUT /swarm", "PUT", "/swarm"))
    return out


def test_swarm_endpoints(pair: Pair) -> None:
    pair.check(_swarm)


def _nodes(s: Side) -> list[Answer]:
    out = [s.call("GET /nodes", "GET", "/nodes")]
    _, nodes, _ = s.request("GET", "/nodes")
    nid = nodes[0]["ID"]
    out.append(s.call("GET /nodes/{id}", "GET", f"/nodes/{nid}"))
    out.append(s.call("GET /nodes/{hostname}", "GET", f"/nodes/{nodes[0]['Description']['Hostname']}"))
    out.append(s.call("GET /nodes/{prefix}", "GET", f"/nodes/{nid[:5]}"))
    out.append(s.call("GET /nodes/missing", "GET", "/nodes/missing"))
    out.append(s.call("GET /nodes?filters=role", "GET", "/nodes", query={"filters": {"role": ["manager"]}}))
    out.append(s.call("GET /nodes?filters=role worker", "GET", "/nodes", query={"filters": {"role": ["worker"]}}))
    out.append(s.call("GET /nodes?filters=bad role", "GET", "/nodes", query={"filters": {"role": ["chief"]}}))
    out.append(s.call("GET /nodes?filters=unknown", "GET", "/nodes", query={"filters": {"colour": ["red"]}}))
    out.append(s.call("GET /nodes?filters=not json", "GET", "/nodes", query={"filters": "{"}))
    v = nodes[0]["Version"]["Index"]
    spec: dict[str, Any] = dict(nodes[0]["Spec"], Labels={"zone": "a"})
    out.append(s.call("POST /nodes/{id}/update (labels)", "POST", f"/nodes/{nid}/update", spec,
                      query={"version": v}))
    out.append(s.call("GET /nodes/{id} (labelled)", "GET", f"/nodes/{nid}"))
    out.append(s.call("GET /nodes?filters=node.label", "GET", "/nodes",
                      query={"filters": {"node.label": ["zone=a"]}}))
    out.append(s.call("POST /nodes/{id}/update (stale)", "POST", f"/nodes/{nid}/update", spec,
                      query={"version": v}))
    _, cur, _ = s.request("GET", f"/nodes/{nid}")
    out.append(s.call("POST /nodes/{id}/update (bad role)", "POST", f"/nodes/{nid}/update",
                      dict(spec, Role="chief"), query={"version": cur["Version"]["Index"]}))
    out.append(s.call("POST /nodes/{id}/update (demote last manager)", "POST", f"/nodes/{nid}/update",
                      dict(spec, Role="worker"), query={"version": cur["Version"]["Index"]}))
    out.append(s.call("POST /nodes/{id}/update (labels back)", "POST", f"/nodes/{nid}/update",
                      dict(spec, Labels={}), query={"version": cur["Version"]["Index"]}))
    out.append(s.call("POST /nodes/missing/update", "POST", "/nodes/missing/update", spec, query={"version": 1}))
    out.append(s.call("DELETE /nodes/{id} (self)", "DELETE", f"/nodes/{nid}"))
    out.append(s.call("DELETE /nodes/missing", "DELETE", "/nodes/missing"))
    return out


def test_node_endpoints(pair: Pair) -> None:
    pair.check(_nodes)


def _autolock(s: Side) -> list[Answer]:
    """Autolock turned on and off by update: the key is readable at once, rotates, and goes."""
    _, sw, _ = s.request("GET", "/swarm")
    locked = dict(sw["Spec"], EncryptionConfig={"AutoLockManagers": True})
    out = [s.call("POST /swarm/update (autolock on)", "POST", "/swarm/update", locked,
                  query={"version": sw["Version"]["Index"]})]
    try:
        _, first, _ = s.request("GET", "/swarm/unlockkey")
        out.append(Answer("GET /swarm/unlockkey (autolock on)", 200 if first.get("UnlockKey") else 404, first))
        out.append(s.call("GET /swarm (autolock on)", "GET", "/swarm"))
        out.append(s.call("POST /swarm/update (rotate unlock key)", "POST", "/swarm/update", locked,
                          query={"version": _version(s), "rotateManagerUnlockKey": "true"}))
        _, second, _ = s.request("GET", "/swarm/unlockkey")
        out.append(Answer("unlock key rotated", 200, {"changed": second.get("UnlockKey") != first.get("UnlockKey")}))
        out.append(s.call("POST /swarm/unlock (not locked, autolock on)", "POST", "/swarm/unlock",
                          {"UnlockKey": second.get("UnlockKey", "")}))
    finally:
        _, sw, _ = s.request("GET", "/swarm")
        out.append(s.call("POST /swarm/update (autolock off)", "POST", "/swarm/update",
                          dict(sw["Spec"], EncryptionConfig={"AutoLockManagers": False}),
                          query={"version": sw["Version"]["Index"]}))
    return out


def test_autolock(pair: Pair) -> None:
    pair.check(_autolock)


def _ca_scenario(cas: dict[str, tuple[str, str]]) -> Callable[[Side], list[Answer]]:
    """The root rotated to an operator's signing CA (RSA and EC) by `swarm update`, then an external CA listed
    and unlisted: the update's answer, the swarm's spec, and whether the swarm's and the node's trust root
    end on the operator's certificate once the rotation is over."""
    def run(s: Side) -> list[Answer]:
        out = []
        for kind, (cert, key) in cas.items():
            _, sw, _ = s.request("GET", "/swarm")
            spec = dict(sw["Spec"], CAConfig=dict(sw["Spec"]["CAConfig"], SigningCACert=cert, SigningCAKey=key))
            out.append(s.call(f"POST /swarm/update (signing CA {kind})", "POST", "/swarm/update", spec,
                              query={"version": sw["Version"]["Index"]}))

            def rotated(b: Any, cert: str = cert) -> bool:
                if b.get("RootRotationInProgress") or not same_cert(b.get("TLSInfo", {}).get("TrustRoot"), cert):
                    return False
                _, nodes, _ = s.request("GET", "/nodes")
                return all(same_cert(n["Description"].get("TLSInfo", {}).get("TrustRoot"), cert) for n in nodes)

            done = settled(s, f"GET /swarm (signing CA {kind})", "/swarm", rotated, timeout=90)
            out.append(done)
            _, nodes, _ = s.request("GET", "/nodes")
            roots = {"swarm": same_cert(done.body.get("TLSInfo", {}).get("TrustRoot"), cert),
                     "nodes": [same_cert(n["Description"].get("TLSInfo", {}).get("TrustRoot"), cert) for n in nodes]}
            out.append(Answer(f"trust roots after the rotation to the {kind} CA", 200, roots))
            # the reference rotated: the comparison is about a rotation that happened
            assert s.name != "dockerd" or roots == {"swarm": True, "nodes": [True]}, roots
        _, sw, _ = s.request("GET", "/swarm")
        ext = [{"Protocol": "cfssl", "URL": "https://127.0.0.1:1/api/v1/cfssl/sign"}]
        out.append(s.call("POST /swarm/update (external CA)", "POST", "/swarm/update",
                          dict(sw["Spec"], CAConfig=dict(sw["Spec"]["CAConfig"], ExternalCAs=ext)),
                          query={"version": sw["Version"]["Index"]}))
        out.append(s.call("GET /swarm (external CA)", "GET", "/swarm"))
        _, sw, _ = s.request("GET", "/swarm")  # the spec as read, sent back unchanged
        out.append(s.call("POST /swarm/update (external CA, round trip)", "POST", "/swarm/update", sw["Spec"],
                          query={"version": sw["Version"]["Index"]}))
        out.append(s.call("GET /swarm (external CA, round trip)", "GET", "/swarm"))
        _, sw, _ = s.request("GET", "/swarm")
        out.append(s.call("POST /swarm/update (no external CA)", "POST", "/swarm/update",
                          dict(sw["Spec"], CAConfig=dict(sw["Spec"]["CAConfig"], ExternalCAs=[])),
                          query={"version": sw["Version"]["Index"]}))
        out.append(s.call("GET /swarm (no external CA)", "GET", "/swarm"))
        return out
    return run


def test_signing_and_external_ca(pair: Pair) -> None:
    cas = {"RSA-2048": signing_ca(rsa.generate_private_key(public_exponent=65537, key_size=2048), "diff-rsa-ca"),
           "EC P-256": signing_ca(ec.generate_private_key(ec.SECP256R1()), "diff-ec-ca")}
    pair.check(_ca_scenario(cas))


def _force_new_cluster(s: Side) -> list[Answer]:
    """`docker swarm init --force-new-cluster` on the active swarm, with a Spec: the same swarm, this manager
    alone in it, the request's labels, history limit and autolock applied (dockerd restarts its swarm node for
    it: what is compared is read once the node manages again)."""
    _, before, _ = s.request("GET", "/swarm")
    _, info, _ = s.request("GET", "/info")
    addr = info["Swarm"]["RemoteManagers"][0]["Addr"]
    out = [s.call("POST /swarm/init (force new cluster, active)", "POST", "/swarm/init", {
        "ListenAddr": addr, "AdvertiseAddr": addr, "ForceNewCluster": True,
        "Spec": {"Labels": {"fnc": "1"}, "Orchestration": {"TaskHistoryRetentionLimit": 7},
                 "EncryptionConfig": {"AutoLockManagers": False}}})]
    try:
        def managing(b: Any) -> bool:
            status, nodes, _ = s.request("GET", "/nodes")
            return status == 200 and b.get("Spec", {}).get("Labels") == {"fnc": "1"} and all(
                n["Status"]["State"] == "ready" for n in nodes)

        after = settled(s, "GET /swarm (after force new cluster)", "/swarm", managing, timeout=120)
        out.append(after)
        kept = {"same cluster": after.body.get("ID") == before["ID"],
                "labels": after.body.get("Spec", {}).get("Labels")}
        out.append(Answer("the swarm kept by force new cluster", 200, kept))
        assert s.name != "dockerd" or kept == {"same cluster": True, "labels": {"fnc": "1"}}, kept
        _, info, _ = s.request("GET", "/info")
        out.append(Answer("GET /info .Swarm (after force new cluster)", 200, {k: info["Swarm"].get(k) for k in (
            "LocalNodeState", "ControlAvailable", "Error", "Nodes", "Managers")}))
        out.append(s.call("GET /nodes (after force new cluster)", "GET", "/nodes"))
    finally:
        _, sw, _ = s.request("GET", "/swarm")
        s.request("POST", "/swarm/update", before["Spec"], query={"version": sw["Version"]["Index"]})
    return out


def test_force_new_cluster_on_the_active_swarm(pair: Pair) -> None:
    pair.check(_force_new_cluster)

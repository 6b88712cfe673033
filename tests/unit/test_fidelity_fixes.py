"""Known differences from dockerd found by real clients (issue 16), each pinned to what dockerd answers.

The expected values were read from a real dockerd 20.10 in swarm mode and from moby/swarmkit's source;
each test says which. Those that need the whole simulated cluster are tests/sim/test_fidelity_sim.py.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shoal import ca as CA
from shoal.errors import ShoalError
from shoal.model.objects import SECOND, RestartPolicy
from shoal.model.state import TaskState
from shoal.testing.sim import service_spec


def test_restart_decided_by_the_tasks_own_policy() -> None:
    from shoal.manager.orchestrator.reconcile import restart_window
    from shoal.model.objects import Service, Task, TaskStatus

    svc = Service(id="s", spec=service_spec("s", restart=RestartPolicy(condition="any")))
    t = Task(id="t", spec=replace(svc.spec.task_template, restart_policy=RestartPolicy(condition="none")),
             status=TaskStatus(state=TaskState.FAILED, timestamp=10.0))
    assert restart_window(svc, t, 10.0) is None


# --- an operator's signing CA, RSA or ECDSA -------------------------------------------------------------
# swarmkit's ensureCertKeyMatch (ca/certificates.go) accepts RSA keys of 2048 bits or more and ECDSA keys on
# P-256, P-384 and P-521; its signer signs with cfssl's DefaultSigAlgo for the key. dockerd 20.10 takes an
# RSA-2048 root in `docker swarm ca --rotate --ca-cert --ca-key` and rotates to it.

NOW = 1_800_000_000.0


def _key(kind: str) -> Any:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    return ec.generate_private_key({"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind])


def _root(key: Any, name: str = "ops-root") -> tuple[str, str]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode())


def _leaf(root: Any) -> str:
    return CA.issue_node_cert(root, CA.make_csr(CA.new_key_pem()), "n1", "worker", "c1", NOW, 3600)


@pytest.mark.parametrize("kind", ["rsa2048", "rsa3072", "p256", "p384", "p521"])
def test_signing_ca_of_either_key_type_rotates(kind: str) -> None:
    old = CA.create_root_ca(NOW)
    cert, key = _root(_key(kind))
    rot = CA.plan_ca_update(old, 0, cert, key, NOW)
    assert CA.normalize_pem(rot.rotation_ca_cert_pem) == CA.normalize_pem(cert)
    leaf = _leaf(rot)
    assert CA.issuer_root(leaf, cert) and CA.chains_to(leaf, CA.signing_chain(rot), old.ca_cert_pem)
    done = CA.finish_rotation(rot)
    assert CA.issuer_root(_leaf(done), cert)
    # and from that root on to a generated one (the cross-signature is made with the operator's key)
    again = CA.plan_ca_update(done, 1, "", "", NOW)
    assert CA.chains_to(_leaf(again), CA.signing_chain(again), cert)


@pytest.mark.parametrize(("cert_kind", "key_kind", "message"), [
    ("rsa2048", "p256", "certificate key mismatch"),
    ("p256", "rsa2048", "certificate key mismatch"),
    ("rsa1024", "rsa1024", "unsupported RSA key parameters"),
])
def test_signing_ca_refusals(cert_kind: str, key_kind: str, message: str) -> None:
    ckey = _key(cert_kind)
    cert, key = _root(ckey)
    if key_kind != cert_kind:
        key = _root(_key(key_kind))[1]
    with pytest.raises(ShoalError) as e:
        CA.plan_ca_update(CA.create_root_ca(NOW), 0, cert, key, NOW)
    assert e.value.message == f"rpc error: code = InvalidArgument desc = {message}"


# --- swarm specs: labels, autolock, the init Spec onto a kept cluster ---------------------------------------
# dockerd 20.10, checked by hand: POST /swarm/update with "Labels": {} leaves GET /swarm's Spec.Labels {}
# (moby's Cluster.Update converts the request's spec onto an empty one, so absent labels are gone too);
# POST /swarm/init with only the top-level AutoLockManagers: true ends with autolock off (initClusterSpec
# sets it from Spec.EncryptionConfig); POST /swarm/init {"ForceNewCluster": true, "Spec": {"Labels": {}}}
# keeps the labels, {"Labels": {"x": "y"}} replaces them, and an absent EncryptionConfig turns autolock off.


def test_swarm_update_empty_labels_clear_them() -> None:
    from shoal.engineapi.convert import swarm_spec_from_wire
    from shoal.model.objects import Annotations, SwarmSpec

    cur = SwarmSpec(annotations=Annotations(name="default", labels={"a": "b"}))
    assert dict(swarm_spec_from_wire({"Labels": {}}, cur).annotations.labels) == {}
    assert dict(swarm_spec_from_wire({"Labels": {"c": "d"}}, cur).annotations.labels) == {"c": "d"}
    # absent clears them too: dockerd's update takes the whole spec as sent (so do node and service updates)
    assert dict(swarm_spec_from_wire({"Name": "default"}, cur).annotations.labels) == {}


def test_swarm_init_autolock_is_the_specs() -> None:
    from shoal.engineapi.convert import init_request_from_wire

    assert not init_request_from_wire({"AutoLockManagers": True}).spec.autolock_managers
    assert init_request_from_wire({"Spec": {"EncryptionConfig": {"AutoLockManagers": True}}}).spec.autolock_managers


def test_init_spec_onto_a_kept_cluster() -> None:
    from shoal.engineapi.convert import init_spec_onto
    from shoal.model.objects import Annotations, SwarmSpec

    cur = SwarmSpec(annotations=Annotations(name="default", labels={"a": "b"}), task_history_retention_limit=7,
                    autolock_managers=True)
    kept = init_spec_onto({"ForceNewCluster": True, "Spec": {"Labels": {}}}, cur)
    assert dict(kept.annotations.labels) == {"a": "b"} and kept.task_history_retention_limit == 7
    assert not kept.autolock_managers
    new = init_spec_onto({"Spec": {"Labels": {"x": "y"}, "Orchestration": {"TaskHistoryRetentionLimit": 3},
                                   "EncryptionConfig": {"AutoLockManagers": True}}}, cur)
    assert dict(new.annotations.labels) == {"x": "y"} and new.task_history_retention_limit == 3
    assert new.autolock_managers


# --- a value sent explicitly comes back as sent ---------------------------------------------------------
# The rule: where swarmkit's protobuf keeps presence (a Duration or BoolValue message, a sub-message) and
# dockerd's types carry a pointer, an explicit zero comes back; where dockerd's converter drops a zero
# (UpdateConfig.Monitor 0, an empty BindOptions), it is gone. Each expected answer below is what dockerd
# 20.10 returned for the same POST /services/create body (GET /services/{id}, and with ?insertDefaults=true).

_CS = {"Image": "busybox", "Command": ["sleep", "1000"]}


def _roundtrip(body: dict[str, Any], *, insert_defaults: bool = False) -> dict[str, Any]:
    from shoal.engineapi.convert import service_spec_from_wire, service_to_wire
    from shoal.model.objects import Service

    spec = service_spec_from_wire({"Name": "s", **body})
    return service_to_wire(Service(id="x", spec=spec), insert_defaults=insert_defaults)


def test_restart_policy_window_zero_comes_back() -> None:
    # docker-py's RestartPolicy(condition="on-failure") sends every field, Window 0 included
    rp = {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 0, "Window": 0}
    got = _roundtrip({"TaskTemplate": {"ContainerSpec": _CS, "RestartPolicy": rp}})
    assert got["Spec"]["TaskTemplate"]["RestartPolicy"] == rp


@pytest.mark.parametrize(("sent", "shown", "with_defaults"), [
    ({"Condition": "on-failure"}, {"Condition": "on-failure", "MaxAttempts": 0},
     {"Condition": "on-failure", "Delay": 5 * SECOND, "MaxAttempts": 0}),
    ({}, {"Condition": "any", "MaxAttempts": 0}, {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0}),
    ({"Window": 7 * SECOND}, {"Condition": "any", "MaxAttempts": 0, "Window": 7 * SECOND},
     {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0, "Window": 7 * SECOND}),
])
def test_restart_policy_absent_durations_stay_absent(sent: dict[str, Any], shown: dict[str, Any],
                                                     with_defaults: dict[str, Any]) -> None:
    body = {"TaskTemplate": {"ContainerSpec": _CS, "RestartPolicy": sent}}
    assert _roundtrip(body)["Spec"]["TaskTemplate"]["RestartPolicy"] == shown
    assert _roundtrip(body, insert_defaults=True)["Spec"]["TaskTemplate"]["RestartPolicy"] == with_defaults


def test_update_monitor_zero_is_not_shown() -> None:
    got = _roundtrip({"TaskTemplate": {"ContainerSpec": _CS}, "UpdateConfig": {"Parallelism": 1, "Monitor": 0}})
    assert got["Spec"]["UpdateConfig"] == {"Parallelism": 1, "FailureAction": "pause", "MaxFailureRatio": 0,
                                           "Order": "stop-first"}
    got = _roundtrip({"TaskTemplate": {"ContainerSpec": _CS}, "UpdateConfig": {}}, insert_defaults=True)
    assert got["Spec"]["UpdateConfig"]["Monitor"] == 5 * SECOND


def test_empty_bind_options_and_privileges_as_dockerd() -> None:
    cs = {**_CS, "Mounts": [{"Type": "bind", "Source": "/tmp", "Target": "/a", "BindOptions": {}}],
          "Privileges": {"SELinuxContext": {"Disable": True}}}
    got = _roundtrip({"TaskTemplate": {"ContainerSpec": cs}})["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert got["Mounts"] == [{"Type": "bind", "Source": "/tmp", "Target": "/a"}]
    assert got["Privileges"] == {"CredentialSpec": None, "SELinuxContext": {
        "Disable": True, "User": "", "Role": "", "Type": "", "Level": ""}}


def test_restart_delay_absent_waits_swarmkits_default() -> None:
    assert RestartPolicy().delay_or_default == 5 * SECOND and RestartPolicy(delay=0).delay_or_default == 0


# --- Endpoint of a service that needs no allocation ------------------------------------------------------
# dockerd 20.10: `docker service create --endpoint-mode dnsrr` (no ports, with or without networks) and a vip
# service without ports or networks both show "Endpoint": {"Spec": {}}: swarmkit's allocator copies the
# endpoint spec only for a service it allocates (IsServiceAllocated).


def test_dnsrr_without_ports_has_an_empty_endpoint() -> None:
    from shoal.engineapi.convert import service_to_wire
    from shoal.model.objects import Endpoint, EndpointSpec, Service

    spec = service_spec("s")
    svc = Service(id="x", spec=replace(spec, endpoint_spec=EndpointSpec(mode="dnsrr")),
                  endpoint=Endpoint(spec=EndpointSpec(mode="dnsrr")))  # as the allocator records it
    assert service_to_wire(svc)["Endpoint"] == {"Spec": {}}


def test_task_defaults_are_ignored_as_dockerd_does() -> None:
    # dockerd (20.10 to 28) never converts Spec.TaskDefaults: after POST /swarm/update with
    # {"TaskDefaults": {"LogDriver": {"Name": "json-file"}}}, GET /swarm shows "TaskDefaults": {}
    from shoal.engineapi.convert import swarm_spec_from_wire, swarm_spec_to_wire
    from shoal.errors import InvalidArgument
    from shoal.model.objects import SwarmSpec

    spec = swarm_spec_from_wire({"TaskDefaults": {"LogDriver": {"Name": "json-file",
                                                                "Options": {"max-size": "1m"}}}}, SwarmSpec())
    assert swarm_spec_to_wire(spec)["TaskDefaults"] == {}
    with pytest.raises(InvalidArgument, match="cannot unmarshal number into Go struct field"):
        swarm_spec_from_wire({"TaskDefaults": {"LogDriver": {"Name": 1}}}, SwarmSpec())

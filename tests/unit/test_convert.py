"""Engine API <-> domain converters, checked against request bodies recorded from the real docker CLI
(tests/fixtures/cli_requests, made by tests/support/record_cli.py) and against shapes seen from dockerd."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shoal.api import messages
from shoal.engineapi.convert import (
    config_spec_from_wire,
    config_to_wire,
    go_time,
    init_request_from_wire,
    network_create_from_wire,
    network_to_wire,
    node_spec_from_wire,
    node_to_wire,
    parse_go_time,
    secret_spec_from_wire,
    secret_to_wire,
    service_spec_from_wire,
    service_spec_to_wire,
    service_to_wire,
    swarm_spec_from_wire,
    swarm_to_wire,
    task_to_wire,
    with_defaults,
)
from shoal.errors import InvalidArgument
from shoal.manager.validation import valid_image_reference, validate_service_spec
from shoal.model.objects import (
    GLOBAL,
    GLOBAL_JOB,
    REPLICATED_JOB,
    SECOND,
    Annotations,
    Cluster,
    Config,
    ConfigSpec,
    ContainerStatus,
    Endpoint,
    EndpointSpec,
    IPAMConfig,
    IPAMOptions,
    JoinTokens,
    ManagerStatus,
    Meta,
    Network,
    NetworkAttachment,
    NetworkSpec,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Platform,
    PortConfig,
    Resources,
    RootCA,
    Secret,
    SecretSpec,
    Service,
    SwarmSpec,
    Task,
    TaskStatus,
    UpdateStatus,
    VirtualIP,
)
from shoal.model.state import TaskState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cli_requests"


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def _body(name: str) -> Any:
    return _load(name)["requests"][-1]["body"]


def _fixtures(prefix: str) -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob(f"{prefix}*.json"))


def _normalise(body: dict[str, Any]) -> dict[str, Any]:
    """What dockerd does to a CLI body before showing it back (documented normalisations)."""
    b = copy.deepcopy(body)
    b.setdefault("Labels", {})
    tt = b["TaskTemplate"]
    tt["Runtime"] = "container"
    tt["ContainerSpec"].setdefault("Isolation", "default")
    priv = tt["ContainerSpec"].get("Privileges")
    if isinstance(priv, dict):  # omitempty in types.Privileges
        for k in ("NoNewPrivileges", "Seccomp", "AppArmor"):
            if not priv.get(k, True):
                del priv[k]
    mode = b.get("Mode") or {}
    if "Replicated" in mode or not mode:
        mode = {"Replicated": {"Replicas": (mode.get("Replicated") or {}).get("Replicas", 1)}}
    b["Mode"] = mode
    return b


# --- recorded CLI requests: round trip -----------------------------------------------------------------


def test_fixtures_exist() -> None:
    assert len(_fixtures("service_")) >= 12
    for name in ("secret_create", "config_create", "network_create_overlay", "swarm_init", "node_update"):
        assert (FIXTURES / f"{name}.json").exists()


@pytest.mark.parametrize("name", _fixtures("service_"))
def test_service_spec_round_trip(name: str) -> None:
    body = _body(name)
    spec = service_spec_from_wire(body, name_generator=lambda: "gen_name")
    out = service_spec_to_wire(spec)
    expected = _normalise(body)
    expected.setdefault("Name", "gen_name")
    assert out == expected
    # and the output converts back to the same domain object
    assert service_spec_from_wire(out) == spec


def test_full_create_field_values() -> None:
    spec = service_spec_from_wire(_body("service_create_full"))
    assert spec.name == "web"
    assert spec.annotations.labels == {"com.example": "1"}
    assert spec.mode.kind == "replicated" and spec.mode.replicas == 3
    tt = spec.task_template
    c = tt.container
    assert c.image == "busybox:latest"
    assert c.command == ("/bin/sh",) and c.args == ("-c", "sleep 1000")
    assert c.env == ("A=B", "C=D")
    assert c.labels == {"ctr": "yes"}
    assert c.init is True and c.read_only and c.tty
    assert c.user == "nobody" and c.dir == "/w" and c.groups == ("wheel",)
    assert c.hostname == "{{.Service.Name}}-{{.Task.Slot}}"
    assert c.hosts == ("10.0.0.9 db",)
    assert c.stop_grace_period == 20 * SECOND and c.stop_signal == "SIGINT"
    assert c.healthcheck is not None
    assert c.healthcheck.test == ("CMD-SHELL", "wget -q -O- localhost || exit 1")
    assert c.healthcheck.interval == 5 * SECOND and c.healthcheck.retries == 3
    assert c.healthcheck.start_period == 10 * SECOND and c.healthcheck.timeout == 2 * SECOND
    assert [s.secret_name for s in c.secrets] == ["s1", "s2"]
    assert c.secrets[0].secret_id == "id-s1"
    assert c.secrets[1].file is not None and c.secrets[1].file.mode == 0o400
    assert c.secrets[1].file.uid == "100" and c.secrets[1].file.name == "/etc/s2.txt"
    assert c.configs[0].config_name == "c1" and c.configs[0].file is not None
    assert c.capability_add == ("CAP_NET_ADMIN",) and c.capability_drop == ("CAP_MKNOD",)
    assert c.sysctls == {"net.core.somaxconn": "1024"}
    assert c.ulimits == ({"Hard": 2048, "Name": "nofile", "Soft": 1024},)
    assert [m["Type"] for m in c.mounts] == ["tmpfs", "volume", "bind"]
    assert c.dns_config == {"Nameservers": ["8.8.8.8"], "Options": ["ndots:2"], "Search": ["example.com"]}
    assert tt.resources is not None and tt.resources.limits is not None
    assert tt.resources.limits.nano_cpus == 500_000_000
    assert tt.resources.limits.memory_bytes == 128 * 1024 * 1024 and tt.resources.limits.pids == 100
    res = tt.resources.reservations
    assert res is not None and res.nano_cpus == 250_000_000 and res.memory_bytes == 64 * 1024 * 1024
    assert res.generic[0].kind == "gpu" and res.generic[0].value == 1
    assert tt.restart_policy is not None
    assert tt.restart_policy.condition == "on-failure" and tt.restart_policy.delay == 3 * SECOND
    assert tt.restart_policy.max_attempts == 4 and tt.restart_policy.window == 60 * SECOND
    assert tt.placement is not None
    assert tt.placement.constraints == ("node.role==manager", "node.labels.zone!=b")
    assert tt.placement.preferences == ("node.labels.zone",) and tt.placement.max_replicas == 2
    assert [n.target for n in tt.networks] == ["id-net1", "id-net2"]
    assert tt.networks[1].aliases == ("web2",)
    assert tt.log_driver is not None and tt.log_driver.name == "json-file"
    assert tt.log_driver.options == {"max-size": "10m"}
    u = spec.update_config
    assert u is not None and u.parallelism == 2 and u.delay == 10 * SECOND and u.order == "start-first"
    assert u.failure_action == "rollback" and u.max_failure_ratio == 0.25 and u.monitor == 20 * SECOND
    r = spec.rollback_config
    assert r is not None and r.parallelism == 3 and r.order == "stop-first"
    ep = spec.endpoint_spec
    assert ep is not None and ep.mode == "vip"
    assert ep.ports[0] == PortConfig(
        protocol="tcp", target_port=80, published_port=8080, publish_mode="ingress"
    )
    assert ep.ports[1] == PortConfig(protocol="udp", target_port=53, published_port=53, publish_mode="host")


def test_minimal_create_defaults() -> None:
    spec = service_spec_from_wire(_body("service_create_minimal"), name_generator=lambda: "calm_trout")
    assert spec.name == "calm_trout"
    assert spec.mode.kind == "replicated" and spec.mode.replicas == 1
    assert spec.update_config is None and spec.rollback_config is None
    assert spec.task_template.restart_policy is None
    assert spec.task_template.container.stop_grace_period is None
    assert spec.task_template.container.init is False
    assert spec.endpoint_spec == EndpointSpec(mode="vip")


def test_random_name_is_dns_valid() -> None:
    import random

    from shoal.names import random_service_name

    spec = service_spec_from_wire(_body("service_create_minimal"),
                                  name_generator=lambda: random_service_name(random.Random(7)))
    assert spec.name and "_" in spec.name  # validated as a DNS name component by the converter


def test_modes() -> None:
    assert service_spec_from_wire(_body("service_create_global")).mode.kind == GLOBAL
    gj = service_spec_from_wire(_body("service_create_global_job"))
    assert gj.mode.kind == GLOBAL_JOB and gj.mode.is_job
    rj = service_spec_from_wire(_body("service_create_replicated_job")).mode
    assert rj.kind == REPLICATED_JOB and rj.max_concurrent == 2 and rj.total_completions == 5
    rj2 = service_spec_from_wire(
        {
            "Name": "j",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
            "Mode": {"ReplicatedJob": {"MaxConcurrent": 3}},
        }
    ).mode
    assert rj2.max_concurrent == 3 and rj2.total_completions == 3
    rj3 = service_spec_from_wire(
        {"Name": "j", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}, "Mode": {"ReplicatedJob": {}}}
    ).mode
    assert rj3.max_concurrent == 1 and rj3.total_completions == 1


def test_update_bodies() -> None:
    force = _load("service_update_force")["requests"][-1]
    assert force["query"]["version"] == "10"
    assert service_spec_from_wire(force["body"]).task_template.force_update == 1
    rb = _load("service_update_rollback")["requests"][-1]
    assert rb["query"]["rollback"] == "previous"
    img = service_spec_from_wire(_body("service_update_image"))
    assert img.task_template.container.image == "busybox:1.37"
    assert service_spec_from_wire(_body("service_scale")).mode.replicas == 7


def test_credential_spec_config_runtime_target() -> None:
    spec = service_spec_from_wire(_body("service_create_credential_spec"))
    c = spec.task_template.container
    assert [r.runtime for r in c.configs] == [False, True]
    assert c.privileges["CredentialSpec"]["Config"] == "id-c1"


def test_unknown_fields_ignored_and_keys_case_insensitive() -> None:
    body = {"name": "web", "Bogus": 1, "taskTemplate": {"containerSpec": {"image": "busybox", "Nope": []}}}
    spec = service_spec_from_wire(body)
    assert spec.name == "web" and spec.task_template.container.image == "busybox"


def test_legacy_top_level_networks() -> None:
    body = {
        "Name": "w",
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
        "Networks": [{"Target": "n1"}],
    }
    assert [n.target for n in service_spec_from_wire(body).task_template.networks] == ["n1"]


def test_swap_fields_dropped_for_old_api_and_rejected_for_new() -> None:
    body = {
        "Name": "w",
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "Resources": {"SwapBytes": 1}},
    }
    service_spec_from_wire(body, api_version="1.47")
    with pytest.raises(InvalidArgument, match="SwapBytes"):
        service_spec_from_wire(body, api_version="1.52")


# --- validation errors ----------------------------------------------------------------------------------

IMG = {"ContainerSpec": {"Image": "busybox"}}
R = "rpc error: code = InvalidArgument desc = "
J = "invalid JSON: json: cannot unmarshal "

BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    (
        {"Name": "bad name", "TaskTemplate": IMG},
        R + "name must be valid as a DNS name component",
    ),
    (
        {"Name": "x" * 64, "TaskTemplate": IMG},
        R + "name must be 63 characters or fewer",
    ),
    (
        {"Name": "x", "TaskTemplate": {"ContainerSpec": {}}},
        R + "ContainerSpec: image reference must be provided",
    ),
    (
        {"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "BusyBox"}}},
        'rpc error: code = InvalidArgument desc = ContainerSpec: "BusyBox" is not a valid repository/tag',
    ),
    ({"Name": "x", "TaskTemplate": {}}, "mismatched Runtime and *Spec fields"),
    ({"Name": "x", "TaskTemplate": {**IMG, "Runtime": "attachment"}}, "unsupported runtime"),
    ({"Name": "x", "TaskTemplate": {**IMG, "Runtime": "plugin"}}, "mismatched Runtime and *Spec fields"),
    (
        {"Name": "x", "TaskTemplate": {**IMG, "RestartPolicy": {"Condition": "sometimes"}}},
        'invalid RestartCondition: "sometimes"',
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "UpdateConfig": {"Order": "sideways"}},
        "unrecognized update order sideways",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "UpdateConfig": {"FailureAction": "explode"}},
        "unrecognized update failure action explode",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "Mode": {"Replicated": {}, "Global": {}}},
        "must specify only one service mode",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "Mode": {"Replicated": {"Replicas": -1}}},
        J + "number -1 into Go struct field ReplicatedService.Mode.Replicated.Replicas of type uint64",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "Mode": {"Replicated": {"Replicas": "3"}}},
        J + "string into Go struct field ReplicatedService.Mode.Replicated.Replicas of type uint64",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": IMG,
            "EndpointSpec": {
                "Ports": [{"TargetPort": 80, "PublishedPort": 80}, {"TargetPort": 81, "PublishedPort": 80}]
            },
        },
        R + "EndpointSpec: duplicate published ports provided",
    ),
    ({"Name": "x", "TaskTemplate": IMG, "EndpointSpec": {"Mode": "rr"}}, 'invalid resolution mode: "rr"'),
    (
        {
            "Name": "x",
            "TaskTemplate": IMG,
            "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 80}]},
        },
        R + "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": IMG,
            "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 70000000000}]},
        },
        J + "number 70000000000 into Go struct field PortConfig.EndpointSpec.Ports"
        ".PublishedPort of type uint32",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "Mode": {"GlobalJob": {}}, "UpdateConfig": {}},
        R + "Jobs may not have an update config",
    ),
    (
        {"Name": "x", "TaskTemplate": {**IMG, "Resources": {"Limits": {"NanoCPUs": 10}}}},
        R + "invalid cpu value 1e-08: Must be at least 0.001",
    ),
    (
        {"Name": "x", "TaskTemplate": {**IMG, "Resources": {"Limits": {"MemoryBytes": 10}}}},
        R + "invalid memory value 10: Must be at least 4MiB",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "busybox",
                    "Mounts": [{"Type": "tmpfs", "Target": "/a"}, {"Type": "tmpfs", "Target": "/a"}],
                }
            },
        },
        R + "ContainerSpec: duplicate mount point: /a",
    ),
    (
        {"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Mounts": [{"Type": "weird"}]}}},
        'invalid MountType: "weird"',
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Secrets": [{"SecretName": "s1"}]}},
        },
        R + "malformed secret reference",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Secrets": [{"SecretName": "s", "SecretID": "i"}]}
            },
        },
        R + "malformed secret reference, no target provided",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "busybox",
                    "Secrets": [
                        {"SecretName": "a", "SecretID": "1", "File": {"Name": "t"}},
                        {"SecretName": "b", "SecretID": "2", "File": {"Name": "t"}},
                    ],
                }
            },
        },
        R + "secret references 'a' and 'b' have a conflicting target: 't'",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Configs": [{"ConfigName": "c", "ConfigID": "i"}]}
            },
        },
        "either File or Runtime should be set",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "UpdateConfig": {"MaxFailureRatio": 2}},
        R + "TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1",
    ),
    (
        {"Name": "x", "TaskTemplate": IMG, "UpdateConfig": {"Delay": -1}},
        R + "TaskSpec: update-delay cannot be negative",
    ),
    (
        {"Name": "x", "TaskTemplate": {**IMG, "RestartPolicy": {"Delay": -1}}},
        R + "TaskSpec: restart-delay cannot be negative",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Healthcheck": {"Interval": 5}}},
        },
        R + "ContainerSpec: Interval in HealthConfig cannot be less than 1ms",
    ),
    (
        {
            "Name": "x",
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Privileges": {"CredentialSpec": {}}}},
        },
        'must either provide "file", "registry", or "config" for credential spec',
    ),
    (
        {"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Env": "A=B"}}},
        J + "string into Go struct field ContainerSpec.TaskTemplate.ContainerSpec.Env of type []string",
    ),
    ([], J + "array into Go value of type swarm.ServiceSpec"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("body", "message"), BAD_SPECS)
def test_service_spec_errors(body: Any, message: str) -> None:
    """What dockerd's decoding or swarmkit's validation (the control API's) refuses, as they word it."""
    with pytest.raises(InvalidArgument) as ei:
        validate_service_spec(service_spec_from_wire(body))
    assert ei.value.status == 400
    assert ei.value.message == message


def test_image_references() -> None:
    for good in (
        "busybox",
        "busybox:1.36",
        "library/busybox",
        "localhost:5000/a/b:c",
        "a.io/x@sha256:" + "a" * 64,
        "Registry.IO/x",
        "my_img",
        "a-b/c__d",
    ):
        assert valid_image_reference(good), good
    for bad in ("BusyBox", "a/B", "x:", ":x", "a" * 64, "busybox::1"):
        assert not valid_image_reference(bad), bad


# --- other request bodies ---------------------------------------------------------------------------------


def test_secret_and_config_create() -> None:
    s = secret_spec_from_wire(_body("secret_create"))
    assert (
        s.annotations.name == "s1" and s.data == b"s3cr3t data\n" and s.annotations.labels == {"env": "prod"}
    )
    assert secret_spec_from_wire(_body("secret_create_driver")).driver is not None
    t = secret_spec_from_wire(_body("secret_create_template"))
    assert t.templating is not None and t.templating.name == "golang"
    c = config_spec_from_wire(_body("config_create"))
    assert c.annotations.name == "c1" and c.data == b"s3cr3t data\n" and c.annotations.labels == {"k": "v"}
    ct = config_spec_from_wire(_body("config_create_template"))
    assert ct.templating is not None and ct.templating.name == "golang"


@pytest.mark.parametrize(
    ("fn", "body", "message"),
    [
        (secret_spec_from_wire, {"Name": "s9", "Data": "!!notb64"}, "illegal base64 data at input byte 0"),
        (
            secret_spec_from_wire,
            {"Name": "s9"},
            R + "secret data must be larger than 0 and less than 512000 bytes",
        ),
        (
            config_spec_from_wire,
            {"Name": "c9"},
            R + "config data must be larger than 0 and less than 1024000 bytes",
        ),
        (
            secret_spec_from_wire,
            {"Name": "bad/name", "Data": "aGk="},
            R + "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the "
            "start and end character must be [a-zA-Z0-9]",
        ),
        (
            secret_spec_from_wire,
            {"Data": "aGk="},
            R + "name must be provided",
        ),
    ],
)
def test_secret_config_errors(fn: Any, body: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        fn(body)
    assert ei.value.message == message


def test_network_create() -> None:
    nc = network_create_from_wire(_body("network_create_overlay"))
    s = nc.spec
    assert s.annotations.name == "net1" and s.driver.name == "overlay" and s.attachable
    assert s.driver.options == {"encrypted": ""} and s.annotations.labels == {"team": "a"}
    assert s.ipam is not None and s.ipam.configs == (IPAMConfig(subnet="10.20.0.0/24", gateway="10.20.0.1"),)
    i = network_create_from_wire(_body("network_create_internal")).spec
    assert i.internal and i.ipv6_enabled
    assert network_create_from_wire(_body("network_create_ingress")).spec.ingress


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "Name": "n",
                "Driver": "overlay",
                "IPAM": {"Config": [{"Subnet": "10.99.0.0/24", "Gateway": "10.98.0.1"}]},
            },
            R + "ipam configuration: subnet 10.99.0.0/24 does not contain gateway 10.98.0.1",
        ),
        (
            {"Name": "n", "Driver": "overlay", "Ingress": True, "Attachable": True},
            R + "ingress network cannot be attachable",
        ),
        (
            {"Name": "n", "Driver": "overlay", "ConfigOnly": True},
            "config-only networks (ConfigOnly/ConfigFrom) are not supported by Shoal",
        ),
    ],
)
def test_network_create_errors(body: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        network_create_from_wire(body)
    assert ei.value.message == message


def test_swarm_init() -> None:
    r = init_request_from_wire(_body("swarm_init"))
    assert r.default_addr_pool == ("10.10.0.0/16", "10.20.0.0/16") and r.subnet_size == 26
    assert r.advertise_addr == "127.0.0.1" and r.listen_addr == "0.0.0.0:2377" and r.data_path_port == 4789
    assert r.spec.annotations.name == "default"
    f = init_request_from_wire(_body("swarm_init_full"))
    assert f.autolock_managers and f.spec.autolock_managers and f.availability == "drain"
    assert f.data_path_port == 7789 and f.data_path_addr == "127.0.0.1"
    assert f.spec.task_history_retention_limit == 3
    assert f.spec.ca_config.node_cert_expiry == 48 * 3600 * SECOND
    assert f.spec.heartbeat_period == 10 * SECOND
    assert f.spec.raft.snapshot_interval == 5000 and f.spec.raft.keep_old_snapshots == 2
    with pytest.raises(InvalidArgument, match="Datapath port number is not in valid range"):
        init_request_from_wire({"DataPathPort": 80})
    with pytest.raises(InvalidArgument, match='swarm spec must be named "default"'):
        init_request_from_wire({"Spec": {"Name": "x"}})


def test_swarm_update_merges() -> None:
    base = SwarmSpec(task_history_retention_limit=5)
    s = swarm_spec_from_wire(_body("swarm_update"), base)
    assert s.task_history_retention_limit == 10
    assert s.ca_config.node_cert_expiry == 720 * 3600 * SECOND
    assert s.raft == base.raft and s.heartbeat_period == base.heartbeat_period


def test_node_update() -> None:
    req = _load("node_update")["requests"][-1]
    assert req["query"]["version"] == "9"
    s = node_spec_from_wire(req["body"])
    assert s.availability == "drain" and s.annotations.labels == {"old": "x", "zone": "a", "ssd": ""}
    assert s.role == "worker"
    assert node_spec_from_wire(_body("node_promote")).role == "manager"
    with pytest.raises(InvalidArgument) as ei:
        node_spec_from_wire({"Role": "boss", "Availability": "active"})
    assert ei.value.message == 'invalid Role: "boss"'


# --- domain -> wire shapes ---------------------------------------------------------------------------------

T0 = 1764109874.053784511


def test_go_time() -> None:
    assert go_time(0) == "0001-01-01T00:00:00Z"
    assert go_time(1700000000.0) == "2023-11-14T22:13:20Z"
    assert go_time(1700000000.5) == "2023-11-14T22:13:20.5Z"
    s = go_time(T0)
    assert s.startswith("2025-11-25T22:31:14.0537") and s.endswith("Z")
    assert go_time(parse_go_time("2026-11-25T22:31:14.053784511Z")).startswith("2026-11-25T22:31:14.05378")
    assert parse_go_time(go_time(1700000000.25)) == 1700000000.25


def _service() -> Service:
    spec = service_spec_from_wire(_body("service_create_full"))
    return Service(
        id="svc1",
        meta=Meta(version=12, created_at=1700000000.0, updated_at=1700000001.0),
        spec=spec,
        endpoint=Endpoint(
            spec=spec.endpoint_spec or EndpointSpec(),
            ports=spec.endpoint_spec.ports if spec.endpoint_spec else (),
            virtual_ips=(VirtualIP(network_id="ingress1", addr="10.0.0.3/24"),),
        ),
    )


def test_service_to_wire() -> None:
    d = service_to_wire(_service())
    assert d["ID"] == "svc1" and d["Version"] == {"Index": 12}
    assert d["CreatedAt"] == "2023-11-14T22:13:20Z" and d["UpdatedAt"] == "2023-11-14T22:13:21Z"
    assert "PreviousSpec" not in d and "UpdateStatus" not in d and "ServiceStatus" not in d
    assert "JobStatus" not in d
    assert d["Endpoint"]["VirtualIPs"] == [{"NetworkID": "ingress1", "Addr": "10.0.0.3/24"}]
    assert d["Endpoint"]["Ports"][0] == {
        "Protocol": "tcp",
        "TargetPort": 80,
        "PublishedPort": 8080,
        "PublishMode": "ingress",
    }
    assert d["Spec"]["TaskTemplate"]["Runtime"] == "container"
    svc = Service(
        id="s",
        spec=service_spec_from_wire(_body("service_create_minimal"), name_generator=lambda: "m"),
        update_status=UpdateStatus(state="updating", started_at=1700000000.0, message="update in progress"),
    )
    d2 = service_to_wire(svc, include_status={"RunningTasks": 1, "DesiredTasks": 3, "CompletedTasks": 0})
    assert d2["Endpoint"] == {"Spec": {}}
    assert d2["UpdateStatus"] == {
        "State": "updating",
        "StartedAt": "2023-11-14T22:13:20Z",
        "Message": "update in progress",
    }
    assert d2["ServiceStatus"] == {"RunningTasks": 1, "DesiredTasks": 3, "CompletedTasks": 0}
    assert d2["Version"] == {}


def test_insert_defaults_matches_dockerd() -> None:
    spec = service_spec_from_wire(_body("service_create_minimal"), name_generator=lambda: "m")
    d = service_spec_to_wire(with_defaults(spec))
    assert d["UpdateConfig"] == {
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 5 * SECOND,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    }
    assert d["RollbackConfig"] == d["UpdateConfig"]
    assert d["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0}
    assert d["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 10 * SECOND
    assert d["TaskTemplate"]["ContainerSpec"]["DNSConfig"] == {}


def test_task_to_wire() -> None:
    spec = service_spec_from_wire(_body("service_create_named_args"))
    net = Network(
        id="net1",
        meta=Meta(version=16, created_at=1700000000.0, updated_at=1700000000.0),
        spec=NetworkSpec(
            annotations=Annotations(name="ov1"),
            attachable=True,
            ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.20.0.0/24", gateway="10.20.0.1"),)),
        ),
        ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.20.0.0/24", gateway="10.20.0.1"),)),
        vni=4097,
    )
    t = Task(
        id="t1",
        meta=Meta(version=31, created_at=1700000000.0, updated_at=1700000001.0),
        spec=spec.task_template,
        service_id="svc1",
        slot=1,
        node_id="n1",
        status=TaskStatus(
            timestamp=1700000001.0,
            state=TaskState.REJECTED,
            message="preparing",
            err="No such image: busybox:latest",
            container=ContainerStatus(),
        ),
        desired_state=TaskState.READY,
        networks=(NetworkAttachment(network_id="net1", addresses=("10.20.0.5/24",)),),
    )
    d = task_to_wire(t, networks={"net1": net})
    assert d["Version"] == {"Index": 31} and "Name" not in d and d["Labels"] == {}
    assert "Runtime" not in d["Spec"]
    assert d["Status"] == {
        "Timestamp": "2023-11-14T22:13:21Z",
        "State": "rejected",
        "Message": "preparing",
        "Err": "No such image: busybox:latest",
        "ContainerStatus": {"ContainerID": "", "PID": 0, "ExitCode": 0},
        "PortStatus": {},
    }
    assert d["DesiredState"] == "ready" and d["Slot"] == 1 and d["NodeID"] == "n1"
    att = d["NetworksAttachments"][0]
    assert att["Addresses"] == ["10.20.0.5/24"]
    assert att["Network"]["Spec"]["DriverConfiguration"] == {"Name": "overlay"}
    assert att["Network"]["DriverState"] == {
        "Name": "overlay",
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"},
    }
    assert "JobIteration" not in d
    assert task_to_wire(Task(id="j", job_iteration=2))["JobIteration"] == {"Index": 2}
    assert task_to_wire(Task(id="n"))["Status"]["State"] == "new"


def test_node_to_wire() -> None:
    n = Node(
        id="n1",
        meta=Meta(version=9, created_at=1700000000.0, updated_at=1700000000.0),
        spec=NodeSpec(role="manager"),
        description=NodeDescription(
            hostname="vm",
            platform=Platform(architecture="x86_64", os="linux"),
            resources=Resources(nano_cpus=2_000_000_000, memory_bytes=1 << 30),
        ),
        status=NodeStatus(state="ready", addr="127.0.0.1"),
        manager_status=ManagerStatus(leader=True, reachability="reachable", addr="127.0.0.1:2377"),
    )
    d = node_to_wire(n)
    assert d["Spec"] == {"Labels": {}, "Role": "manager", "Availability": "active"}
    assert d["Description"]["Platform"] == {"Architecture": "x86_64", "OS": "linux"}
    assert d["Description"]["Resources"] == {"NanoCPUs": 2_000_000_000, "MemoryBytes": 1 << 30}
    assert d["Description"]["TLSInfo"] == {} and d["Description"]["Engine"] == {}
    assert d["Status"] == {"State": "ready", "Addr": "127.0.0.1"}
    assert d["ManagerStatus"] == {"Leader": True, "Reachability": "reachable", "Addr": "127.0.0.1:2377"}
    assert "ManagerStatus" not in node_to_wire(Node(id="w"))


def test_swarm_to_wire() -> None:
    c = Cluster(
        id="c1",
        meta=Meta(version=10, created_at=1700000000.0, updated_at=1700000000.0),
        root_ca=RootCA(ca_cert_pem="PEM"),
        join_tokens=JoinTokens(worker="W", manager="M"),
    )
    d = swarm_to_wire(c)
    assert d["Spec"] == {
        "Name": "default",
        "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {
            "SnapshotInterval": 10000,
            "KeepOldSnapshots": 0,
            "LogEntriesForSlowFollowers": 500,
            "ElectionTick": 10,
            "HeartbeatTick": 1,
        },
        "Dispatcher": {"HeartbeatPeriod": 5000000000},
        "CAConfig": {"NodeCertExpiry": 7776000000000000},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }
    assert d["TLSInfo"] == {"TrustRoot": "PEM"} and d["RootRotationInProgress"] is False
    assert d["DefaultAddrPool"] == ["10.0.0.0/8"] and d["SubnetSize"] == 24 and d["DataPathPort"] == 4789
    assert d["JoinTokens"] == {"Worker": "W", "Manager": "M"}
    assert "JoinTokens" not in swarm_to_wire(c, include_join_tokens=False)


def test_secret_config_to_wire() -> None:
    s = Secret(
        id="s",
        meta=Meta(version=13, created_at=1700000000.0, updated_at=1700000000.0),
        spec=SecretSpec(annotations=Annotations(name="s1"), data=b"hi"),
    )
    assert secret_to_wire(s) == {
        "ID": "s",
        "Version": {"Index": 13},
        "CreatedAt": "2023-11-14T22:13:20Z",
        "UpdatedAt": "2023-11-14T22:13:20Z",
        "Spec": {"Name": "s1", "Labels": {}},
    }
    c = Config(
        id="c", meta=Meta(version=14), spec=ConfigSpec(annotations=Annotations(name="c1"), data=b"cfg\n")
    )
    assert config_to_wire(c)["Spec"] == {
        "Name": "c1",
        "Labels": {},
        "Data": base64.b64encode(b"cfg\n").decode(),
    }


def test_network_to_wire_ingress_shape() -> None:
    n = Network(
        id="ing",
        meta=Meta(created_at=1700000000.0),
        spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True),
        ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.1"),)),
        vni=4096,
    )
    d = network_to_wire(n)
    assert d == {
        "Name": "ingress",
        "Id": "ing",
        "Created": "2023-11-14T22:13:20Z",
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv4": True,
        "EnableIPv6": False,
        "IPAM": {
            "Driver": "default",
            "Options": None,
            "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}],
        },
        "Internal": False,
        "Attachable": False,
        "Ingress": True,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4096"},
        "Labels": {},
    }
    plain = network_to_wire(
        Network(id="x", spec=NetworkSpec(annotations=Annotations(name="ov"))), api_version="1.44"
    )
    assert "EnableIPv4" not in plain and plain["Labels"] is None and plain["Containers"] is None
    listed = network_to_wire(n, listed=True)  # the cluster's view of the ingress, as dockerd lists it
    assert listed["Labels"] is None and listed["Containers"] is None


def test_messages() -> None:
    assert messages.secret_in_use("x", ["y"]) == (R + "secret 'x' is in use by the following service: y")
    assert messages.config_in_use("c", ["a", "b"]).endswith("is in use by the following services: a, b")
    assert messages.service_name_conflict("web") == (
        "rpc error: code = AlreadyExists desc = "
        "name conflicts with an existing object: service web already exists"
    )
    assert messages.service_not_found("nope") == "service nope not found"
    assert messages.network_name_conflict("ov1") == "network with name ov1 already exists"
    assert messages.SWARM_EXISTS.startswith("This node is already part of a swarm.")
    assert messages.UPDATE_OUT_OF_SEQUENCE == "rpc error: code = Unknown desc = update out of sequence"
    assert messages.secrets_not_found(["s1"]) == R + "secret not found: s1"

"""The pure task -> container-create translation (no Docker needed)."""

from __future__ import annotations

import base64

import pytest

from shoal.agent.exec import container as c
from shoal.errors import FatalError
from shoal.model.objects import (
    SECOND,
    Annotations,
    ConfigReference,
    ContainerSpec,
    Endpoint,
    FileTarget,
    HealthConfig,
    LogDriver,
    PortConfig,
    ResourceRequirements,
    Resources,
    SecretReference,
    Task,
    TaskSpec,
)


def make_task(cs: ContainerSpec | None = None, **kw: object) -> Task:
    base: dict[str, object] = {
        "id": "t" * 25,
        "service_id": "s" * 25,
        "service_annotations": Annotations(name="web"),
        "slot": 3,
        "node_id": "n" * 25,
        "spec": TaskSpec(container=cs or ContainerSpec(image="busybox")),
    }
    base.update(kw)
    return Task(**base)  # type: ignore[arg-type]


def test_name_replicated_and_global() -> None:
    assert c.container_name(make_task()) == f"web.3.{'t' * 25}"
    assert c.container_name(make_task(slot=0)) == f"web.{'n' * 25}.{'t' * 25}"
    assert c.container_name(make_task(annotations=Annotations(name="x.1.y"))) == "x.1.y"


def test_labels_like_swarm() -> None:
    spec = ContainerSpec(image="busybox", labels={"a": "1", "com.docker.swarm.task.id": "spoof"})
    body = c.create_body(make_task(spec), node_id="me")
    labels = body["Labels"]
    assert labels == {
        "a": "1",
        "com.docker.swarm.task": "",
        "com.docker.swarm.task.id": "t" * 25,
        "com.docker.swarm.task.name": f"web.3.{'t' * 25}",
        "com.docker.swarm.node.id": "n" * 25,
        "com.docker.swarm.service.id": "s" * 25,
        "com.docker.swarm.service.name": "web",
        "com.shoal.node.id": "me",
    }
    # without an explicit node id the task's node is the owner
    assert c.create_body(make_task())["Labels"]["com.shoal.node.id"] == "n" * 25


def test_image_reference() -> None:
    assert c.image_ref("busybox") == "busybox:latest"
    assert c.image_ref("busybox:1.36") == "busybox:1.36"
    assert c.image_ref("localhost:5000/app") == "localhost:5000/app:latest"
    assert c.image_ref("busybox:1@sha256:" + "a" * 64) == "busybox:1@sha256:" + "a" * 64
    assert c.split_digest("busybox:1@sha256:abc") == ("busybox:1", "sha256:abc")
    assert c.split_digest("busybox:1") == ("busybox:1", "")
    assert c.create_body(make_task())["Image"] == "busybox:latest"
    assert c.create_body(make_task(), image="busybox:1")["Image"] == "busybox:1"


def test_image_required() -> None:
    with pytest.raises(FatalError, match="dockerexec: image required"):
        c.create_body(make_task(ContainerSpec()))


def test_command_and_args_as_moby() -> None:
    b = c.create_body(make_task(ContainerSpec(image="i", command=("sh", "-c"), args=("echo hi",))))
    assert b["Entrypoint"] == ["sh", "-c"] and b["Cmd"] == ["echo hi"]
    b = c.create_body(make_task(ContainerSpec(image="i", args=("--flag",))))
    assert "Entrypoint" not in b and b["Cmd"] == ["--flag"]
    b = c.create_body(make_task(ContainerSpec(image="i", command=("run",))))
    assert b["Entrypoint"] == ["run"] and b["Cmd"] == []
    b = c.create_body(make_task(ContainerSpec(image="i")))
    assert "Entrypoint" not in b and "Cmd" not in b


def test_plain_fields() -> None:
    spec = ContainerSpec(
        image="i",
        env=("A=1", "B=2"),
        dir="/w",
        user="1000:1000",
        groups=("wheel",),
        tty=True,
        open_stdin=True,
        read_only=True,
        hostname="h",
        stop_signal="SIGINT",
        stop_grace_period=1500 * SECOND // 1000,
        init=True,
        isolation="default",
        sysctls={"net.core.somaxconn": "1024"},
        capability_add=("NET_ADMIN",),
        capability_drop=("CHOWN",),
        oom_score_adj=100,
        hosts=("10.0.0.1 db db.local", "bad"),
        dns_config={"Nameservers": ["8.8.8.8"], "Search": ["example.org"], "Options": ["ndots:2"]},
        ulimits=({"Name": "nofile", "Soft": 10, "Hard": 20},),
    )
    b = c.create_body(make_task(spec))
    h = b["HostConfig"]
    assert b["Env"] == ["A=1", "B=2"]
    assert (b["WorkingDir"], b["User"], b["Hostname"], b["Tty"], b["OpenStdin"]) == (
        "/w",
        "1000:1000",
        "h",
        True,
        True,
    )
    assert b["StopSignal"] == "SIGINT" and b["StopTimeout"] == 2
    assert h["GroupAdd"] == ["wheel"] and h["ReadonlyRootfs"] is True and h["Init"] is True
    assert h["Isolation"] == "default"
    assert h["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert h["CapAdd"] == ["NET_ADMIN"] and h["CapDrop"] == ["CHOWN"] and h["OomScoreAdj"] == 100
    assert h["ExtraHosts"] == ["db:10.0.0.1", "db.local:10.0.0.1"]
    assert (h["Dns"], h["DnsSearch"], h["DnsOptions"]) == (["8.8.8.8"], ["example.org"], ["ndots:2"])
    assert h["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 20}]


def test_defaults_are_minimal() -> None:
    b = c.create_body(make_task())
    assert b["HostConfig"] == {}
    for key in ("WorkingDir", "User", "Hostname", "StopSignal", "StopTimeout", "Healthcheck", "ExposedPorts"):
        assert key not in b


def test_healthcheck_in_nanoseconds() -> None:
    hc = HealthConfig(
        test=("CMD-SHELL", "true"), interval=SECOND, timeout=2 * SECOND, retries=3, start_period=4 * SECOND
    )
    b = c.create_body(make_task(ContainerSpec(image="i", healthcheck=hc)))
    assert b["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"],
        "Interval": 1_000_000_000,
        "Timeout": 2_000_000_000,
        "Retries": 3,
        "StartPeriod": 4_000_000_000,
        "StartInterval": 0,
    }
    b = c.create_body(make_task(ContainerSpec(image="i", healthcheck=HealthConfig(test=("NONE",)))))
    assert b["Healthcheck"]["Test"] == ["NONE"]


def test_mounts() -> None:
    spec = ContainerSpec(
        image="i",
        mounts=(
            {
                "Type": "bind",
                "Source": "/src",
                "Target": "/dst",
                "ReadOnly": True,
                "BindOptions": {"Propagation": "rshared"},
            },
            {
                "Type": "volume",
                "Source": "vol",
                "Target": "/v",
                "VolumeOptions": {
                    "NoCopy": True,
                    "Labels": {"k": "v"},
                    "DriverConfig": {"Name": "local", "Options": {"o": "x"}},
                },
            },
            {"type": "tmpfs", "target": "/t", "tmpfs_options": {"size_bytes": 1024, "mode": 0o700}},
        ),
    )
    files = [c.FileMount(source="/host/s", target="/run/secrets/s")]
    m = c.create_body(make_task(spec), files=files)["HostConfig"]["Mounts"]
    assert m == [
        {
            "Type": "bind",
            "Source": "/src",
            "Target": "/dst",
            "ReadOnly": True,
            "BindOptions": {"Propagation": "rshared"},
        },
        {
            "Type": "volume",
            "Source": "vol",
            "Target": "/v",
            "VolumeOptions": {
                "NoCopy": True,
                "Labels": {"k": "v"},
                "DriverConfig": {"Name": "local", "Options": {"o": "x"}},
            },
        },
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 0o700}},
        {"Type": "bind", "Source": "/host/s", "Target": "/run/secrets/s", "ReadOnly": True},
    ]


def test_cluster_volumes_rejected() -> None:
    with pytest.raises(FatalError, match="cluster volumes"):
        c.create_body(make_task(ContainerSpec(image="i", mounts=({"Type": "cluster", "Target": "/x"},))))


def test_secret_and_config_targets() -> None:
    s = SecretReference(secret_id="sid", secret_name="pw", file=FileTarget(name="pw"))
    assert c.secret_target(s) == "/run/secrets/pw"
    assert (
        c.secret_target(SecretReference(secret_id="sid", secret_name="pw", file=FileTarget(name="/etc/pw")))
        == "/etc/pw"
    )
    assert c.secret_target(SecretReference(secret_id="sid", secret_name="pw")) == "/run/secrets/pw"
    assert c.config_target(ConfigReference(config_id="cid", config_name="app.conf")) == "/app.conf"
    assert (
        c.config_target(ConfigReference(config_id="cid", config_name="x", file=FileTarget(name="etc/app")))
        == "/etc/app"
    )
    assert (
        c.config_target(ConfigReference(config_id="cid", config_name="x", file=FileTarget(name="/a/b")))
        == "/a/b"
    )


def test_resources() -> None:
    spec = TaskSpec(
        container=ContainerSpec(image="i"),
        resources=ResourceRequirements(
            limits=Resources(nano_cpus=500_000_000, memory_bytes=64 << 20, pids=100),
            reservations=Resources(memory_bytes=32 << 20, nano_cpus=1),
        ),
    )
    h = c.create_body(make_task(spec=spec))["HostConfig"]
    assert h == {"NanoCpus": 500_000_000, "Memory": 64 << 20, "PidsLimit": 100, "MemoryReservation": 32 << 20}
    # a reservation above the limit would make dockerd refuse the container: dropped
    spec = TaskSpec(
        container=ContainerSpec(image="i"),
        resources=ResourceRequirements(
            limits=Resources(memory_bytes=1 << 20), reservations=Resources(memory_bytes=2 << 20)
        ),
    )
    assert "MemoryReservation" not in c.create_body(make_task(spec=spec))["HostConfig"]


def test_log_driver() -> None:
    spec = TaskSpec(
        container=ContainerSpec(image="i"), log_driver=LogDriver(name="json-file", options={"max-size": "1m"})
    )
    assert c.create_body(make_task(spec=spec))["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m"},
    }


def test_host_mode_ports_only() -> None:
    ep = Endpoint(
        ports=(
            PortConfig(target_port=80, published_port=8080, publish_mode="host"),
            PortConfig(target_port=53, protocol="udp", publish_mode="host"),
            PortConfig(target_port=443, published_port=443, publish_mode="ingress"),
        )
    )
    b = c.create_body(make_task(endpoint=ep))
    assert b["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert b["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostPort": "8080"}], "53/udp": [{}]}


def test_privileges() -> None:
    priv = {
        "NoNewPrivileges": True,
        "Seccomp": {"Mode": "unconfined"},
        "AppArmor": {"Mode": "disabled"},
        "SELinuxContext": {"Disable": False, "User": "u", "Type": "t"},
    }
    h = c.create_body(make_task(ContainerSpec(image="i", privileges=priv)))["HostConfig"]
    assert h["SecurityOpt"] == [
        "label=user:u",
        "label=type:t",
        "seccomp=unconfined",
        "apparmor=unconfined",
        "no-new-privileges=true",
    ]
    with pytest.raises(FatalError):
        c.create_body(make_task(ContainerSpec(image="i", privileges={"Seccomp": {"Mode": "weird"}})))
    custom = {
        "Seccomp": {
            "Mode": "custom",
            "Profile": base64.b64encode(b'{"defaultAction":"SCMP_ACT_ALLOW"}').decode(),
        }
    }
    h = c.create_body(make_task(ContainerSpec(image="i", privileges=custom)))["HostConfig"]
    assert h["SecurityOpt"] == ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']


def test_stop_timeout_rounds_up() -> None:
    assert c.stop_timeout_seconds(0) == 0
    assert c.stop_timeout_seconds(SECOND) == 1
    assert c.stop_timeout_seconds(SECOND + 1) == 2

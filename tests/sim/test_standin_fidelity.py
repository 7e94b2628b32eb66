"""The stand-ins held to the real tools where the audit found them kinder (shared/reference/sim-fidelity.md,
"Kinder than real", one test per row), run in-process against the API stand-in on loopback (no test hosts).
Each test names the row and the real source it follows."""

from __future__ import annotations

import io
import json
import socket
import ssl
import tarfile
import time

import pytest

from tests.harness.sim import daemon, faults, kube, paths
from tests.harness.sim.standins import microk8s, snap
from tests.harness.tools import run_real
from tests.sim.test_api import api, reconcile, sim_kubeconfig  # noqa: F401 - the in-process API stand-in fixture


@pytest.fixture
def sim(api, tmp_path, monkeypatch):  # noqa: F811 - the fixture imported above
    """The stand-ins talk to the in-process API; their files live under tmp_path."""
    from kubernetes import client
    cfg = api.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    ctx.check_hostname = False
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    port = api.sim.server_address[1]

    class LoopbackApi(kube.Api):
        def __init__(self, host=None, port_=None):
            self.host, self.port, self.ctx = "127.0.0.1", port, ctx

    monkeypatch.setattr(kube, "Api", LoopbackApi)
    data = tmp_path / "snapdata"
    locks = data / "var/lock"
    for name, value in {"SNAP": tmp_path / "snap", "SNAP_DATA": data, "SNAP_COMMON": tmp_path / "common",
                        "LOCKS": locks, "STOPPED_LOCK": locks / "stopped.lock",
                        "CLUSTERED_LOCK": locks / "clustered.lock", "HA_LOCK": locks / "ha-cluster",
                        "CLIENT_CONFIG": data / "client.config", "CLUSTER_TOKENS": data / "cluster-tokens.txt",
                        "CERTS": tmp_path / "certs", "SIM_RUN": tmp_path / "run", "SIM_CLUSTER": tmp_path / "c.json",
                        "SIM_CONFIG": tmp_path / "host.json", "SIM_FAULTS": tmp_path / "faults",
                        "SNAPD_STATE": tmp_path / "snapd.json"}.items():
        monkeypatch.setattr(paths, name, str(value))
    locks.mkdir(parents=True)
    (data / "client.config").write_text("readable\n")
    (tmp_path / "host.json").write_text('{"ip": "10.99.0.1"}')
    client.CoreV1Api(api).create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes"},
        "spec": {"ports": [{"port": 443, "targetPort": 16443}]}})
    reconcile(api, 3)
    api.sim_dir = tmp_path
    return api


def run(main, argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def kubectl(sim, *args: str) -> tuple[int, str, str]:
    """The real kubectl v1.30.0 against the in-process API stand-in."""
    r = run_real("kubectl", sim_kubeconfig(sim, sim.sim_dir), *args)
    return r.returncode, r.stdout, r.stderr


NOT_RUNNING = "microk8s is not running. Use microk8s inspect for a deeper inspection."


def test_row5_status_needs_a_node_whose_status_is_exactly_ready(sim, capsys):
    """is_cluster_ready (microk8s 1.30 scripts/wrappers/common/utils.py): " Ready " in `kubectl get nodes`;
    a cordoned node shows Ready,SchedulingDisabled, so all nodes cordoned = not running, exit 1."""
    rc, out, _ = run(microk8s.cmd_status, [], capsys)
    assert rc == 0 and out.startswith("microk8s is running\n")
    for node in ("cp", "gpu1"):
        assert kubectl(sim, "cordon", node)[:2] == (0, f"node/{node} cordoned\n")
    assert run(microk8s.cmd_status, [], capsys)[:2] == (1, NOT_RUNNING + "\n")
    kubectl(sim, "uncordon", "gpu1")
    assert run(microk8s.cmd_status, [], capsys)[0] == 0


def test_row6_status_checks_permissions_before_anything_else(sim, capsys, monkeypatch, tmp_path):
    """microk8s-status.wrapper: exit_if_no_permissions (stderr, exit 1) comes before the worker text (exit 0)
    and status.py's exit_if_stopped (exit 0)."""
    monkeypatch.setattr(paths, "CLIENT_CONFIG", str(tmp_path / "unreadable"))
    open(paths.CLUSTERED_LOCK, "w").close()
    open(paths.STOPPED_LOCK, "w").close()
    rc, out, err = run(microk8s.cmd_status, [], capsys)
    assert rc == 1 and out == ""
    assert err.startswith("Insufficient permissions to access MicroK8s.\nYou can either try again with sudo or add "
                          "the user ") and "    sudo usermod -a -G microk8s " in err and "'newgrp microk8s'" in err


def test_row7_no_arguments_prints_the_help_and_exits_1(capsys):
    """microk8s.wrapper: no argument -> help(), exit 1; help/--help/-h -> exit 0; unknown -> text + help, 1."""
    rc, out, _ = run(microk8s.main, [], capsys)
    assert rc == 1 and out.startswith("Available subcommands are:\n\tadd-node\n\taddons\n\tconfig\n")
    assert out.endswith("\tstatus\n\tstop\n\tversion\n\tinspect\n")
    assert run(microk8s.main, ["--help"], capsys)[:2] == (0, out)
    rc, out2, _ = run(microk8s.main, ["frob"], capsys)
    assert rc == 1 and out2 == "'frob' is not a valid MicroK8s subcommand.\n" + out


def test_row8_status_addon_and_deprecated_yaml(sim, capsys):
    """status.py: --addon prints enabled/disabled even when not ready (exit 1 then); an unknown addon is
    "disabled" with exit 0; --yaml = print_short_yaml."""
    open(paths.HA_LOCK, "w").close()
    assert run(microk8s.cmd_status, ["--addon", "no-such-addon"], capsys)[:2] == (0, "disabled\n")
    assert run(microk8s.cmd_status, ["--addon", "core/ha-cluster"], capsys)[:2] == (0, "enabled\n")
    assert run(microk8s.cmd_status, ["--addon", "community/ha-cluster"], capsys)[:2] == (0, "disabled\n")
    rc, out, _ = run(microk8s.cmd_status, ["--yaml"], capsys)
    assert rc == 0 and out.startswith("microk8s:\n  running: True\naddons:\n  core/")
    assert "  core/ha-cluster: enabled\n" in out and "  core/dns: disabled\n" in out
    for node in ("cp", "gpu1"):
        kubectl(sim, "cordon", node)
    assert run(microk8s.cmd_status, ["--addon", "ha-cluster"], capsys)[:2] == (1, "disabled\n")
    assert run(microk8s.cmd_status, ["--yaml"], capsys)[:2] == (
        1, f"microk8s:\n  running: False\n  message: {NOT_RUNNING}\n")
    rc, out, _ = run(microk8s.cmd_status, ["--format", "yaml"], capsys)
    assert rc == 1 and out.startswith("microk8s:\n  running: False\nhigh-availability:\n  enabled: True\n")
    assert out.endswith(f"  message: {NOT_RUNNING}\n") and "addons:" not in out


def test_row13_images_import_exits_0_after_a_failure(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "SIM_CLUSTER", str(tmp_path / "c.json"))
    """do_image_import (microk8s 1.30 scripts/wrappers/distributed_op.py): "Failed to import images on
    <node>:25000: <body>" / "Failed to reach ..." and exit 0 all the same."""
    import http.client
    nodes = {"items": [{"status": {"addresses": [{"type": "InternalIP", "address": ip}]}}
                       for ip in ("10.99.0.1", "10.99.0.2")]}
    monkeypatch.setattr(microk8s, "_api", lambda: type("A", (), {"request": lambda self, *a, **k: nodes})())

    class Agent:   # the two nodes' cluster agents: one refuses the image, one is unreachable
        def __init__(self, ip, port, **kw):
            self.ip = ip

        def request(self, *a, **kw):
            if self.ip == "10.99.0.2":
                raise ConnectionRefusedError(111, "Connection refused")

        def getresponse(self):
            body = b'{"error":"Failed to import the image: microk8s.ctr command failed: exit status 1"}'
            return type("R", (), {"status": 500, "read": lambda self: body})()

        def close(self):
            pass

    monkeypatch.setattr(http.client, "HTTPSConnection", Agent)
    tar = tmp_path / "x.tar"
    tar.write_bytes(b"not a tarball")
    rc, out, _ = run(microk8s.cmd_images, ["import", str(tar)], capsys)
    assert rc == 0
    assert ("Pushing OCI images to 10.99.0.1:25000\nFailed to import images on 10.99.0.1:25000: {\"error\":\"Failed "
            "to import the image: microk8s.ctr command failed: exit status 1\"}\n") in out
    assert "Failed to reach 10.99.0.2:25000: [Errno 111] Connection refused\n" in out


def test_row15_kubectl_wait_on_nothing_fails_at_once_and_names_the_resource_on_timeout(sim, capsys):
    """kubectl 1.30 cmd/wait: no match -> "error: no matching resources found" without waiting; a timeout ->
    "error: timed out waiting for the condition on pods/NAME" (the resource, plural)."""
    from kubernetes import client
    t = time.monotonic()
    rc, _, err = kubectl(sim, "wait", "--for=condition=Ready", "pods", "-l", "app=none", "--timeout=30s")
    assert (rc, err) == (1, "error: no matching resources found\n") and time.monotonic() - t < 5
    client.CoreV1Api(sim).create_namespaced_pod("default", {   # its image is on no node: never Ready
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/nope:1"}]}})
    rc, _, err = kubectl(sim, "wait", "--for=condition=Ready", "pod/p1", "--timeout=1s")
    assert (rc, err) == (1, "error: timed out waiting for the condition on pods/p1\n")


def test_row16_rollout_restart_rolls_the_pods(sim, capsys):
    """kubectl rollout restart (stage 40 restarts CoreDNS with it): the pod template gets
    kubectl.kubernetes.io/restartedAt, the controller replaces the pods, rollout status then succeeds."""
    from kubernetes import client
    apps, v1 = client.AppsV1Api(sim), client.CoreV1Api(sim)
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "w", "image": "coredns/coredns:1.10.1"}]}}}})
    reconcile(sim, 3)
    before = {p.metadata.name for p in v1.list_namespaced_pod("default", label_selector="app=web").items}
    assert kubectl(sim, "rollout", "restart", "deployment/web")[:2] == (0, "deployment.apps/web restarted\n")
    annotations = apps.read_namespaced_deployment("web", "default").spec.template.metadata.annotations
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    reconcile(sim, 3)
    after = {p.metadata.name for p in v1.list_namespaced_pod("default", label_selector="app=web").items}
    assert after and not after & before
    assert kubectl(sim, "rollout", "status", "deployment/web", "--timeout=10s")[:2] == (
        0, 'deployment "web" successfully rolled out\n')


def test_row17_snap_usage_errors_exit_64_and_old_snapd_has_no_hold(sim, capsys, monkeypatch):
    """snapd tests/main/snap-exit-codes: unknown command / unknown flag exit 64; go-flags wording
    "unknown flag `X'"; refresh --hold first came in snapd 2.58 (canonical/snapd 7bff8779)."""
    unknown = "error: unknown command \"frobnicate\", see 'snap help'.\n"
    assert run(snap.main, ["frobnicate"], capsys)[::2] == (64, unknown)
    assert run(snap.main, ["install", "--bogus", "x.snap"], capsys)[::2] == (64, "error: unknown flag `bogus'\n")
    assert run(snap.main, ["list", "-z"], capsys)[::2] == (64, "error: unknown flag `z'\n")
    monkeypatch.setattr(snap, "snapd_version", lambda: "2.57")
    assert run(snap.main, ["refresh", "--hold", "microk8s"], capsys)[::2] == (64, "error: unknown flag `hold'\n")


def test_row17_unseeded_snapd_refuses_installs_until_seed_loaded(sim, capsys):
    """A freshly booted host: install -> "too early for operation, device not yet seeded or device model not
    acknowledged", exit 10 (a ChangeConflictError: retryable); `snap wait system seed.loaded` returns once seeded."""
    faults.snapd_seeding("/", 1.5)
    assert run(snap.main, ["install", "/nonexistent/x.snap"], capsys)[::2] == (10, f"error: {snap.TOO_EARLY}\n")
    t = time.monotonic()
    assert snap.main(["wait", "system", "seed.loaded"]) == 0
    assert 0.5 < time.monotonic() - t < 5
    rc, _, err = run(snap.main, ["install", "/nonexistent/x.snap"], capsys)
    assert rc == 1 and "too early" not in err   # seeded now: the install itself runs (and fails on the file)


def test_row18_add_node_token_ttl_0_is_already_expired(sim, capsys, tmp_path):
    """add_token.py add_token_with_expiry: any ttl but -1 gets TOKEN|now+ttl, so 0 expires at once (the agent
    refuses it); the default -1 is single-use."""
    from tests.harness.sim.certs import produce_certs
    produce_certs(tmp_path / "certs", ["127.0.0.1"], "cp")
    rc, token, _ = run(microk8s.cmd_add_node, ["--token-ttl", "0", "--format", "token"], capsys)
    with open(paths.CLUSTER_TOKENS) as f:
        assert rc == 0 and f"{token.strip()}|" in f.read()
    time.sleep(1.1)
    assert daemon.consume_token(token.strip()) is False


# ---- helm (row 14) ---------------------------------------------------------------------------------

def _chart(tmp_path, name: str, objects: str) -> str:
    path = tmp_path / f"{name}-0.1.0.tgz"
    files = {"Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: 0.1.0\n", "values.yaml": "a: {b: 1, c: 2}\n",
             "templates/objects.yaml": objects}
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return str(path)


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {}\ndata:\n  k: v\n"


def real_helm(sim, *args: str) -> tuple[int, str, str]:
    """The real helm v3.17.1 (what `microk8s helm3` runs on test hosts) against the in-process API stand-in."""
    r = run_real("helm", sim_kubeconfig(sim, sim.sim_dir), *args)
    return r.returncode, r.stdout, r.stderr


def test_row14_helm_install_messages_pending_release_and_ownership(sim, tmp_path):
    """helm v3.17.1: upgrade --install of a new name prints `Release "x" does not exist. Installing it now.`
    (cmd/helm/upgrade.go) and marks its objects (setMetadataVisitor); a release left pending-* ->
    "UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress" (pkg/action/action.go
    errPending), hidden from `helm list` without --all (pkg/action/list.go), recovered by `helm rollback`;
    an existing object this release does not own -> pkg/action/validate.go existingResourceConflict."""
    import base64
    import gzip

    from kubernetes import client
    v1 = client.CoreV1Api(sim)
    chart = _chart(tmp_path, "demo", CM.format("cm1"))
    rc, out, _ = real_helm(sim, "upgrade", "--install", "rel", chart, "-n", "default")
    assert rc == 0 and out.startswith('Release "rel" does not exist. Installing it now.\nNAME: rel\n')
    cm = v1.read_namespaced_config_map("cm1", "default").metadata
    assert cm.labels["app.kubernetes.io/managed-by"] == "Helm"
    assert cm.annotations == {"meta.helm.sh/release-name": "rel", "meta.helm.sh/release-namespace": "default"}
    # a killed `helm upgrade` leaves revision 2 pending-upgrade (helm stores it before it applies anything)
    secret = v1.read_namespaced_secret("sh.helm.release.v1.rel.v1", "default")
    rel = json.loads(gzip.decompress(base64.b64decode(base64.b64decode(secret.data["release"]))))
    rel["version"], rel["info"] = 2, dict(rel["info"], status="pending-upgrade")
    v1.create_namespaced_secret("default", {
        "metadata": {"name": "sh.helm.release.v1.rel.v2", "labels": dict(secret.metadata.labels,
                                                                          status="pending-upgrade", version="2")},
        "type": "helm.sh/release.v1",
        "data": {"release": base64.b64encode(base64.b64encode(gzip.compress(json.dumps(rel).encode()))).decode()}})
    rc, _, err = real_helm(sim, "upgrade", "--install", "rel", chart, "-n", "default")
    assert (rc, err) == (1, "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n")
    assert "rel" not in real_helm(sim, "list", "-n", "default")[1]
    assert [x["status"] for x in json.loads(real_helm(sim, "list", "-n", "default", "--all", "-o", "json")[1])] == \
        ["pending-upgrade"]
    assert real_helm(sim, "rollback", "rel", "-n", "default")[:2] == (0, "Rollback was a success! Happy Helming!\n")
    assert real_helm(sim, "upgrade", "--install", "rel", chart, "-n", "default")[0] == 0
    # an object that exists and is not the release's
    v1.create_namespaced_config_map("default", {"metadata": {"name": "cm2"}, "data": {}})
    rc, _, err = real_helm(sim, "install", "other", _chart(tmp_path, "other", CM.format("cm2")), "-n", "default")
    assert (rc, err) == (1, ('Error: INSTALLATION FAILED: Unable to continue with install: ConfigMap "cm2" in '
                            'namespace "default" exists and cannot be imported into the current release: invalid '
                            'ownership metadata; label validation error: missing key "app.kubernetes.io/managed-by": '
                            'must be set to "Helm"; annotation validation error: missing key '
                            '"meta.helm.sh/release-name": must be set to "other"; annotation validation error: '
                            'missing key "meta.helm.sh/release-namespace": must be set to "default"\n'))
    assert v1.list_namespaced_secret("default", label_selector="owner=helm,name=other").items == []   # no release


def test_row14_null_in_a_later_values_file_deletes_the_chart_default(sim, tmp_path):
    """pkg/cli/values: -f files merge with mergeMaps (a null stays), then coalescing with the chart's values
    deletes the key: a null in the second file removes the chart's default, not just the first file's value."""
    chart = _chart(tmp_path, "nulls", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: n\ndata:\n"
                                      "  a: {{ toJson .Values.a | quote }}\n")
    (tmp_path / "f1.yaml").write_text("a: {b: 5}\n")
    (tmp_path / "f2.yaml").write_text("a: {b: null}\n")
    rc, out, err = real_helm(sim, "template", "x", chart, "-f", str(tmp_path / "f1.yaml"), "-f", str(tmp_path / "f2.yaml"))
    assert rc == 0, err
    assert "a: \"{\\\"c\\\":2}\"" in out


# ---- join / dqlite (rows 12, 19) -------------------------------------------------------------------

def test_row12_dqlite_quorum_needs_more_than_half_of_the_voters(monkeypatch, tmp_path):
    """Raft (dqlite): the datastore, so the API, answers only while more than half of the voters are up: with 2
    voters losing either stops it, 3 survive one loss (daemon.Quorum gates the API stand-in)."""
    monkeypatch.setattr(paths, "SIM_CONFIG", str(tmp_path / "host.json"))
    monkeypatch.setattr(paths, "SIM_CLUSTER", str(tmp_path / "cluster.json"))
    (tmp_path / "host.json").write_text('{"ip": "10.0.0.1"}')
    up = {"10.0.0.2": False, "10.0.0.3": True}
    monkeypatch.setattr(daemon, "_reachable", lambda ip, port: port == 19001 and up[ip])
    for voters, ok in ((["10.0.0.1"], True), (["10.0.0.1", "10.0.0.2"], False),
                       (["10.0.0.1", "10.0.0.2", "10.0.0.3"], True), (["10.0.0.1", "10.0.0.3"], True)):
        (tmp_path / "cluster.json").write_text(json.dumps({"voters": voters}))
        assert daemon.Quorum().ok() is ok, voters
    up["10.0.0.3"] = False
    (tmp_path / "cluster.json").write_text(json.dumps({"voters": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]}))
    assert daemon.Quorum().ok() is False


def test_row19_join_to_an_unreachable_control_node_waits_for_the_kernels_tcp_timeout(capsys, monkeypatch, tmp_path):
    """join.py get_connection_info: http.client without a timeout and an uncaught OSError, so a control node
    that never answers the SYNs is given up only by the kernel (~127 s: tcp_syn_retries 6) with a traceback,
    exit 1. Timing 0.01 scales that to 1.3 s (the old stand-in gave up after its own 30 s). The unreachable node
    is a loopback listener whose accept queue is full: the kernel drops further SYNs, as for a dead host."""
    for name in ("LOCKS", "SNAP_COMMON"):
        monkeypatch.setattr(paths, name, str(tmp_path))
    monkeypatch.setattr(paths, "SIM_CONFIG", str(tmp_path / "host.json"))
    (tmp_path / "host.json").write_text('{"ip": "10.99.0.1", "timing": 0.01}')
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):   # fills the queue
            t = time.monotonic()
            rc, out, err = run(microk8s.cmd_join, [f"127.0.0.1:{port}/" + "a" * 32], capsys)
            waited = time.monotonic() - t
    assert rc == 1 and out == "Contacting cluster at 127.0.0.1\n"
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith("TimeoutError: [Errno 110] Connection timed out\n")
    assert 1.2 < waited < 5

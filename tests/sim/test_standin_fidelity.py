"""The stand-ins held to the real tools where the audit found them kinder (shared/reference/sim-fidelity.md,
"Kinder than real", one test per row), run in-process against the API stand-in on loopback (no test hosts).
Each test names the row and the real source it follows."""

from __future__ import annotations

import io
import ssl
import tarfile
import time

import pytest

from tests.harness.sim import daemon, faults, kube, paths
from tests.harness.sim.standins import helm, kubectl, microk8s, snap
from tests.sim.test_api import api, reconcile  # noqa: F401 - the in-process API stand-in fixture


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

    for mod in (kube, kubectl, helm):
        monkeypatch.setattr(mod, "Api", LoopbackApi)
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
    return api


def run(main, argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


NOT_RUNNING = "microk8s is not running. Use microk8s inspect for a deeper inspection."


def test_row5_status_needs_a_node_whose_status_is_exactly_ready(sim, capsys):
    """is_cluster_ready (microk8s 1.30 scripts/wrappers/common/utils.py): " Ready " in `kubectl get nodes`;
    a cordoned node shows Ready,SchedulingDisabled, so all nodes cordoned = not running, exit 1."""
    rc, out, _ = run(microk8s.cmd_status, [], capsys)
    assert rc == 0 and out.startswith("microk8s is running\n")
    for node in ("cp", "gpu1"):
        assert kubectl.main(["cordon", node]) == 0
    capsys.readouterr()
    assert run(microk8s.cmd_status, [], capsys)[:2] == (1, NOT_RUNNING + "\n")
    kubectl.main(["uncordon", "gpu1"])
    capsys.readouterr()
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
        kubectl.main(["cordon", node])
    capsys.readouterr()
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
    rc, _, err = run(kubectl.main, ["wait", "--for=condition=Ready", "pods", "-l", "app=none", "--timeout=30s"],
                     capsys)
    assert (rc, err) == (1, "error: no matching resources found\n") and time.monotonic() - t < 5
    client.CoreV1Api(sim).create_namespaced_pod("default", {   # its image is on no node: never Ready
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/nope:1"}]}})
    rc, _, err = run(kubectl.main, ["wait", "--for=condition=Ready", "pod/p1", "--timeout=1s"], capsys)
    assert (rc, err) == (1, "error: timed out waiting for the condition on pods/p1\n")


def _deploy(want=2, **status):
    return {"metadata": {"name": "web", "generation": 2}, "spec": {"replicas": want},
            "status": dict({"observedGeneration": 2}, **status)}


def test_row16_rollout_status_follows_kubectl_status_viewers():
    """kubectl 1.30 polymorphichelpers/rollout_status.go DeploymentStatusViewer / DaemonSetStatusViewer."""
    st = kubectl.rollout_state
    assert st("Deployment", _deploy(updatedReplicas=1)) == (
        'Waiting for deployment "web" rollout to finish: 1 out of 2 new replicas have been updated...', False)
    assert st("Deployment", _deploy(updatedReplicas=2, replicas=3)) == (
        'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...', False)
    assert st("Deployment", _deploy(updatedReplicas=2, replicas=2, availableReplicas=1)) == (
        'Waiting for deployment "web" rollout to finish: 1 of 2 updated replicas are available...', False)
    assert st("Deployment", _deploy(updatedReplicas=2, replicas=2, availableReplicas=2)) == (
        'deployment "web" successfully rolled out', True)
    assert st("Deployment", dict(_deploy(), status={"observedGeneration": 1})) == (
        "Waiting for deployment spec update to be observed...", False)
    with pytest.raises(ValueError, match='deployment "web" exceeded its progress deadline'):
        st("Deployment", _deploy(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]))
    ds = {"metadata": {"name": "calico-node", "generation": 1}, "spec": {},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2,
                     "numberAvailable": 1}}
    assert st("DaemonSet", ds) == (
        'Waiting for daemon set "calico-node" rollout to finish: 1 of 2 updated pods are available...', False)
    ds["status"]["updatedNumberScheduled"] = 1
    assert st("DaemonSet", ds)[0] == ('Waiting for daemon set "calico-node" rollout to finish: 1 out of 2 new pods '
                                      "have been updated...")


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
    assert run(kubectl.main, ["rollout", "restart", "deployment/web"], capsys)[:2] == (
        0, "deployment.apps/web restarted\n")
    annotations = apps.read_namespaced_deployment("web", "default").spec.template.metadata.annotations
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    reconcile(sim, 3)
    after = {p.metadata.name for p in v1.list_namespaced_pod("default", label_selector="app=web").items}
    assert after and not after & before
    assert run(kubectl.main, ["rollout", "status", "deployment/web", "--timeout=10s"], capsys)[:2] == (
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


def test_row14_helm_install_messages_pending_release_and_ownership(sim, capsys, tmp_path):
    """helm v3: upgrade --install of a new name prints `Release "x" does not exist. Installing it now.`
    (cmd/helm/upgrade.go) and marks its objects (setMetadataVisitor); a release left pending-* ->
    "UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress" (pkg/action/upgrade.go
    errPending), hidden from `helm list` without --all (pkg/action/list.go), recovered by `helm rollback`;
    an existing object this release does not own -> pkg/action/validate.go existingResourceConflict."""
    from kubernetes import client
    chart = _chart(tmp_path, "demo", CM.format("cm1"))
    rc, out, _ = run(helm.main, ["upgrade", "--install", "rel", chart, "-n", "default"], capsys)
    assert rc == 0 and out.startswith('Release "rel" does not exist. Installing it now.\nNAME: rel\n')
    cm = client.CoreV1Api(sim).read_namespaced_config_map("cm1", "default").metadata
    assert cm.labels["app.kubernetes.io/managed-by"] == "Helm"
    assert cm.annotations == {"meta.helm.sh/release-name": "rel", "meta.helm.sh/release-namespace": "default"}
    # a killed `helm upgrade` leaves revision 2 pending-upgrade
    h = helm.Api()
    stuck = dict(helm._releases(h, "default", "rel")[-1], version=2)
    stuck["info"] = dict(stuck["info"], status="pending-upgrade")
    helm._store(h, stuck)
    rc, _, err = run(helm.main, ["upgrade", "--install", "rel", chart, "-n", "default"], capsys)
    assert (rc, err) == (1, "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n")
    assert "rel" not in run(helm.main, ["list", "-n", "default"], capsys)[1]
    assert '"status": "pending-upgrade"' in run(helm.main, ["list", "-n", "default", "--all", "-o", "json"],
                                                capsys)[1]
    assert run(helm.main, ["rollback", "rel", "-n", "default"], capsys)[:2] == (
        0, "Rollback was a success! Happy Helming!\n")
    assert run(helm.main, ["upgrade", "--install", "rel", chart, "-n", "default"], capsys)[0] == 0
    # an object that exists and is not the release's
    client.CoreV1Api(sim).create_namespaced_config_map("default", {"metadata": {"name": "cm2"}, "data": {}})
    rc, _, err = run(helm.main, ["install", "other", _chart(tmp_path, "other", CM.format("cm2")), "-n", "default"],
                     capsys)
    assert (rc, err) == (1, ('Error: INSTALLATION FAILED: rendered manifests contain a resource that already exists. '
                            'Unable to continue with install: ConfigMap "cm2" in namespace "default" exists and cannot '
                            'be imported into the current release: invalid ownership metadata; label validation '
                            'error: missing key "app.kubernetes.io/managed-by": must be set to "Helm"; annotation '
                            'validation error: missing key "meta.helm.sh/release-name": must be set to "other"; '
                            'annotation validation error: missing key "meta.helm.sh/release-namespace": must be set '
                            'to "default"\n'))
    assert helm._releases(h, "default", "other") == []   # refused before any release record was written


def test_row14_null_in_a_later_values_file_deletes_the_chart_default():
    """pkg/cli/values: -f files merge with mergeMaps (a null stays), then coalescing with the chart's values
    deletes the key: a null in the second file removes the chart's default, not just the first file's value."""
    from tests.harness.sim.charts import merge_values
    user = helm._merge_maps(helm._merge_maps({}, {"a": {"b": 5}}), {"a": {"b": None}})
    assert merge_values({"a": {"b": 1, "c": 2}}, user) == {"a": {"c": 2}}

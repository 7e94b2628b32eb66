"""`provision diag` and stage 90 on ONE simulated 1-node cluster with a (simulated) H100, Nginx HTTPS and shared
homes (tests/harness/sim: real sshd, containerd, kubectl, helm, JupyterHub, nginx).

A full `provision install` (no --to: stage 90 runs its checks last) must end green; then each breakage an admin
meets turns the right check red with its fix, and restoring it turns diag green again: an image removed from
containerd, the hub stopped, the node's GPU held by a pod, the installed certificate replaced by an expired one.
`diag spawn` explains a GPU server that cannot be scheduled and one whose image is not imported. diag only reads:
every command it runs is the batched fact script (its log says so). The tests share the cluster and run in order.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.webtools import self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
NAME = "jupyter.diag.example"
SINGLEUSER = "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"


class Cluster:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.cert, self.key = self_signed(base, "tls", NAME)
        gateway = host.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": "Adm1n-diag-pw", "NODEPORT": "30080",
                "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/data/share/homes",
                "USE_GPU_OPERATOR": "true", "ENABLE_NGINX_PROXY": "true", "NGINX_PROXY_SERVER_NAME": NAME,
                "NGINX_PROXY_CERT_FILE": str(self.cert), "NGINX_PROXY_KEY_FILE": str(self.key)}
        self.env = base / "jhub.env"
        self.env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        self.logs = base / "logs"
        self.state: dict = {}

    def provision(self, *args: str, host: str | None = None) -> subprocess.CompletedProcess:
        h = self.h
        argv = [sys.executable, "-m", "provision", *args, "--env", str(self.env),
                "--host", host or f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"),
                       PROVISION_LOG_DIR=str(self.logs))
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=500, check=False)

    def install(self, *select: str) -> subprocess.CompletedProcess:
        return self.provision("install", "--bundle", str(self.bundle), *select, "--yes", "--json")

    def diag(self, *more: str) -> tuple[int, dict]:
        r = self.provision("diag", "--offline-images", str(self.bundle), "--json", *more)
        assert r.returncode in (0, 1, 2), r.stderr[-2000:]
        return r.returncode, json.loads(r.stdout)

    def spawn(self, user: str) -> tuple[int, dict]:
        r = self.provision("diag", "spawn", user, "--offline-images", str(self.bundle), "--json")
        assert r.returncode in (0, 1, 2), r.stderr[-2000:]
        return r.returncode, json.loads(r.stdout)

    def ssh(self, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        r = self.ssh("sudo microk8s kubectl " + shlex.join(args), stdin)
        assert r.returncode == 0, r.stderr
        return r.stdout


def bad(report: dict) -> dict[str, dict]:
    """{check name: check} for the checks that are not ok, over every node and the cluster."""
    return {c["name"]: c for checks in report["checks"].values() for c in checks if c["status"] != "ok"}


def wait_diag(c: Cluster, want, timeout: float = 60) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        code, report = c.diag()
        if want(code, report) or time.monotonic() > deadline:
            return code, report
        time.sleep(2)


def user_pod(name: str, user: str, image: str, gpus: int = 0) -> dict:
    """A pod the way KubeSpawner labels one (label component=singleuser-server, the real name annotated)."""
    container = {"name": "notebook", "image": image}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "jhub", "labels": {"component": "singleuser-server"},
                         "annotations": {"hub.jupyter.org/username": user}},
            "spec": {"containers": [container]}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("diag")
    from tests.harness.sim.spec import SimSpec

    with sim_cluster(base, spec=SimSpec(gpus={"node1": (1, "H100")}), gpu_bundle=True) as (_harness, (h,), bundle):
        assert h.exec(["mkdir", "-p", "/data/share/homes"]).returncode == 0
        c = Cluster(h, bundle, base)
        t = time.monotonic()
        c.state["install"] = (c.install(), time.monotonic() - t)
        yield c


def need(c: Cluster, key: str) -> None:
    if not c.state.get(key):
        pytest.skip(f"an earlier step failed ({key})")


def test_full_install_ends_with_stage_90_green_and_diag_reads_only(cluster):
    c = cluster
    r, seconds = c.state["install"]
    assert r.returncode == 0, r.stderr[-3000:]
    stage90 = next(s for s in json.loads(r.stdout)["stages"] if s["number"] == 90)
    assert stage90["status"] == "unchanged" and stage90["actions_applied"] == 0, stage90
    for f in c.logs.glob("*.log"):
        f.unlink()
    t = time.monotonic()
    code, report = c.diag()
    took = time.monotonic() - t
    assert code == 0 and report["exit_code"] == 0 and not bad(report), bad(report)
    assert report["summary"]["fail"] == 0 and report["summary"]["ok"] >= 20, report["summary"]
    names = {ch["name"] for checks in report["checks"].values() for ch in checks}
    assert {"node ready", "images", "calico-node", "coredns", "coredns upstream", "pvc hub-db-dir", "pvc jhub-homes",
            "helm jhub", "hub", "proxy", "gpus", "nodeport", "nginx", "tls certificate", "firewall", "disk"} <= names
    # read-only: diag ran the inventory read and the batched fact script on the node, nothing else (its log lists
    # every command; tests/unit/test_diag.py::test_probe_scripts_only_read checks what the script does)
    log = "".join(f.read_text() for f in c.logs.glob("*.log"))
    commands = [ln for ln in log.splitlines() if ": $ " in ln]
    assert any("provision facts:" in ln for ln in commands), commands
    assert all("provision facts:" in ln or "then cat /var/lib/provision/inventory.yaml" in ln for ln in commands), commands
    table = c.provision("diag", "--offline-images", str(c.bundle))
    assert table.returncode == 0 and "healthy: 0 failed" in table.stdout, table.stdout + table.stderr
    c.state["green"] = True
    print(f"\ninstall 00-90: {seconds:.1f}s; diag: {took:.1f}s, {report['summary']['ok']} checks")


def test_a_removed_image_fails_the_images_check_until_stage_20_imports_it(cluster):
    c = cluster
    need(c, "green")
    assert c.ssh(f"sudo microk8s ctr images rm {SINGLEUSER}").returncode == 0
    code, report = c.diag()
    check = bad(report).get("images")
    assert code == 2 and check and check["status"] == "fail" and SINGLEUSER in check["detail"], report
    assert "provision install --only 20" in check["hint"]
    assert c.install("--only", "20").returncode == 0
    code, report = c.diag()
    assert code == 0, bad(report)


def test_a_stopped_hub_fails_the_hub_check(cluster):
    c = cluster
    need(c, "green")
    c.kubectl("-n", "jhub", "patch", "deploy", "hub", "-p", '{"spec": {"replicas": 0}}')
    code, report = wait_diag(c, lambda code, r: "hub" in bad(r))
    check = bad(report).get("hub")
    assert code == 2 and check and check["status"] == "fail" and "provision install --only 70" in check["hint"], report
    c.kubectl("-n", "jhub", "patch", "deploy", "hub", "-p", '{"spec": {"replicas": 1}}')
    code, report = wait_diag(c, lambda code, r: code == 0, timeout=120)
    assert code == 0, bad(report)


def test_an_expired_certificate_fails_the_certificate_check(cluster):
    c = cluster
    need(c, "green")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(c.key.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=90))
               .not_valid_after(now - datetime.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
               .sign(key, hashes.SHA256()))
    site_cert = "/etc/nginx/ssl/jupyterhub.crt"
    good = c.h.path(site_cert).read_bytes()
    c.h.path(site_cert).write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    try:
        code, report = c.diag()
        check = bad(report).get("tls certificate")
        assert code == 2 and check and "expired" in check["detail"], report
        assert "NGINX_PROXY_CERT_FILE" in check["hint"] and "provision install --only 80" in check["hint"]
    finally:
        c.h.path(site_cert).write_bytes(good)
    code, report = c.diag()
    assert code == 0, bad(report)


def test_gpus_all_in_use_warn_and_spawn_explains_the_unschedulable_gpu_server(cluster):
    c = cluster
    need(c, "green")
    holder = user_pod("jupyter-bob", "bob", "registry.k8s.io/pause:3.7", gpus=1)
    c.kubectl("apply", "-f", "-", stdin=json.dumps(holder))
    code, report = wait_diag(c, lambda code, r: "gpus" in bad(r))
    check = bad(report).get("gpus")
    assert code == 1 and check and check["status"] == "warn", report
    assert "new GPU spawns will wait: 1 of 1 in use by jhub/jupyter-bob" in check["detail"]
    c.kubectl("apply", "-f", "-", stdin=json.dumps(user_pod("jupyter-carol", "carol", "registry.k8s.io/pause:3.7",
                                                            gpus=1)))
    deadline = time.monotonic() + 30
    while True:
        code, found = c.spawn("carol")
        if found["findings"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 1 and found["pod"] == "jupyter-carol", found
    cause = found["findings"][0]
    assert cause["cause"] == "unschedulable" and "nvidia.com/gpu" in cause["sentence"], found
    assert "in use by jhub/jupyter-bob" in cause["sentence"] and "stop idle servers" in cause["fix"]
    assert c.spawn("bob")[0] == 0   # bob's server runs
    c.kubectl("delete", "pod", "-n", "jhub", "jupyter-bob", "jupyter-carol", "--wait=false")


def test_spawn_explains_an_image_that_is_not_imported_and_users_without_a_server(cluster):
    c = cluster
    need(c, "green")
    image = "quay.io/jupyterhub/k8s-singleuser-sample:0.0.1-not-in-bundle"
    c.kubectl("apply", "-f", "-", stdin=json.dumps(user_pod("jupyter-dave", "dave", image)))
    deadline = time.monotonic() + 30
    while True:
        code, found = c.spawn("dave")
        if any(f["cause"] == "image" for f in found["findings"]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    cause = next((f for f in found["findings"] if f["cause"] == "image"), None)
    assert code == 1 and cause and image in cause["sentence"] and "not in the bundle" in cause["sentence"], found
    assert "provision install --only 20" in cause["fix"]
    code, report = c.diag()
    assert code == 2 and "provision diag spawn dave" in bad(report)["user dave"]["hint"], report
    c.kubectl("delete", "pod", "-n", "jhub", "jupyter-dave", "--wait=false")
    code, found = c.spawn("nobody")   # the hub's database (read in the hub pod) has no such user
    assert code == 1 and not found["pod"] and found["findings"][0]["cause"] == "no-user", found
    code, found = c.spawn("admin")    # exists (stage 70 signed it up), no server started
    assert code == 1 and found["findings"][0]["cause"] == "not-requested", found


def test_spawn_explains_a_failed_spawn_from_the_events_the_hub_kept(cluster):
    """A failed spawn's pod is deleted and its events expire within the hour; the hub's post-stop hook keeps them
    on its volume (the journey test shows the real hook writing them): diag spawn reads them there."""
    c = cluster
    need(c, "green")
    sched = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available."
    record = {"user": "admin", "server": "", "pod": "jupyter-admin", "saved": "2026-11-30T10:00:00+00:00",
              "events": [{"type": "Warning", "reason": "FailedScheduling", "message": sched,
                          "time": "2026-11-30T09:58:00Z", "count": 4}]}
    path = "/srv/jupyterhub/spawn-events/admin.json"
    c.kubectl("exec", "-i", "-n", "jhub", "deploy/hub", "-c", "hub", "--", "sh", "-c",
              f"mkdir -p /srv/jupyterhub/spawn-events && cat > {path}", stdin=json.dumps(record))
    try:
        code, found = c.spawn("admin")
        assert code == 1 and not found["pod"], found
        assert found["findings"][0]["cause"] == "unschedulable", found
        assert "kept when it stopped (2026-11-30T10:00:00+00:00)" in found["notes"][0], found
    finally:
        c.kubectl("exec", "-n", "jhub", "deploy/hub", "-c", "hub", "--", "rm", "-f", path)


def test_an_unreachable_control_node_is_one_line_and_exit_3(cluster):
    c = cluster
    r = c.provision("diag", "--offline-images", str(c.bundle), host=f"{c.h.ssh_user}@{c.h.address}:1")
    assert r.returncode == 3, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "hint:" in r.stderr, r.stderr

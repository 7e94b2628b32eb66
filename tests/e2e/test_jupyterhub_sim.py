"""Stage 70 (JupyterHub) end to end on a simulated 1-node cluster (tests/harness/sim), over real SSH.

`provision install --to 70` runs as a user runs it (a subprocess, real sshd, real containerd, the
snap/microk8s stand-ins). `microk8s helm3` is the real helm v3.17.1 and renders the real z2jh charts; the
hub pod runs a REAL JupyterHub with the chart's own jupyterhub_config.py and our values, behind a real
configurable-http-proxy pod reached through its Service (tests/harness/sim/runtime.py), so the first-admin
sign-up goes through NativeAuthenticator, the hub's sqlite database and KubeSpawner. The tests share one
cluster and run in order: a fresh install of the older chart 4.2.0 (still supported, its security warning
shown and kept in the summary), the upgrade to the default 4.4.0, a re-run with zero changes, a new admin
applied by the next run, a missing hub image (WaitHub names the pod, its status and its events) and the
re-run that converges after stage 20 imports it again, a release left pending-upgrade (helm's own refusal).
Figures are printed (-s to see them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
HUB_IMAGE = "quay.io/jupyterhub/k8s-hub:4.4.0"
SHOWN = re.compile(r"First admin account 'admin' created with password: (\S+)")
OLD_CHART_WARNING = "jupyterhub chart 4.2.0 predates the security fixes of 4.3.4/4.4.0"


class Cluster:
    def __init__(self, harness, host, bundle: Path, base: Path):
        self.harness, self.h, self.bundle, self.base = harness, host, bundle, base
        self.state: dict = {}
        self.runs = 0

    def env(self, **extra: str) -> Path:
        gateway = self.h.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", **extra}
        self.runs += 1
        p = self.base / f"env{self.runs}.env"
        p.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        return p

    def install(self, env: Path, *more: str, select: tuple[str, ...] = ("--to", "70")
                ) -> tuple[subprocess.CompletedProcess, Path, float]:
        log = self.base / f"run{self.runs}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(self.bundle),
                "--host", f"{self.h.ssh_user}@{self.h.address}", "--identity", self.h.ssh_key,
                "--known-hosts", self.h.known_hosts, *select, "--yes", "--json", "--log-file", str(log), *more]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))  # other runs on this machine
        t = time.monotonic()
        r = subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=800, check=False)
        return r, log, time.monotonic() - t

    def ssh(self, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command], input=stdin,
                              capture_output=True, text=True, timeout=120, check=False)

    def kube_json(self, *args: str) -> dict:
        r = self.ssh("sudo microk8s kubectl " + " ".join(shlex.quote(a) for a in args) + " -o json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def hub_python(self, code: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        flag = "-i " if stdin is not None else ""
        return self.ssh(f"sudo microk8s kubectl exec {flag}-n jhub deploy/hub -c hub -- python3 -c {shlex.quote(code)}",
                        stdin)


def summary(r: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary (rc {r.returncode}):\n{r.stderr[-3000:]}") from None


def stage(s: dict, number: int) -> dict:
    return next(x for x in s["stages"] if x["number"] == number)


def commands(log: Path) -> int:
    """Round trips to the node: one log line per command run there."""
    return sum(1 for ln in log.read_text().splitlines() if re.match(r"^\S+ \S+: \$ ", ln))


def admin_login(c: Cluster, password: str) -> dict:
    """provision/jupyterhub/hub/admin.py's sign-up of an existing admin: refused as a second account, then the login."""
    src = resources.files("provision.jupyterhub.hub").joinpath("admin.py").read_text()
    r = c.ssh("sudo microk8s kubectl exec -i -n jhub deploy/hub -c hub -- python3 -c "
              f"{shlex.quote(src)} signup", stdin=json.dumps({"username": "admin", "password": password}))
    return json.loads(r.stdout.strip().splitlines()[-1])


def hub_admins(c: Cluster) -> list[str]:
    r = c.hub_python("import sqlite3; print(sorted(n for (n,) in sqlite3.connect('jupyterhub.sqlite')"
                     ".execute('select name from users where admin = 1')))")
    assert r.returncode == 0, r.stderr
    import ast
    return ast.literal_eval(r.stdout.strip())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim70")
    with sim_cluster(base) as (harness, (h,), bundle):
        yield Cluster(harness, h, bundle, base)


def warnings_of(s: dict, number: int) -> list[str]:
    return [ch["detail"] for n in stage(s, number)["nodes"].values() for ch in n["checks"] if ch["warning"]]


def hub_get(c: Cluster, path: str) -> str:
    r = c.hub_python(f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/hub/{path}', "
                     "timeout=30).read().decode())")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_install_through_70_brings_the_hub_up(cluster):
    """The older chart 4.2.0 still installs; its security warning is in the stage output and the summary."""
    c = cluster
    r, log, seconds = c.install(c.env(Z2JH_CHART_VERSION="4.2.0"))
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    assert stage(s, 70)["status"] == "changed"
    assert f"warn  chart: {OLD_CHART_WARNING}" in r.stderr
    assert any(OLD_CHART_WARNING in w for w in warnings_of(s, 70)), stage(s, 70)
    c.state["installed"] = True
    pods = c.kube_json("get", "pods", "-n", "jhub")["items"]
    for comp in ("hub", "proxy"):
        pod = next(p for p in pods if p["metadata"]["labels"].get("component") == comp)
        assert pod["status"]["phase"] == "Running"
        assert any(x["type"] == "Ready" and x["status"] == "True" for x in pod["status"]["conditions"]), pod["status"]
    releases = json.loads(c.ssh("sudo microk8s helm3 list -n jhub -o json").stdout)
    assert [(x["name"], x["chart"], x["status"]) for x in releases] == [("jhub", "jupyterhub-4.2.0", "deployed")]
    # the generated password: shown once on the terminal, never in the log file nor in the JSON summary
    shown = SHOWN.findall(r.stderr)
    assert len(shown) == 1 and len(shown[0]) >= 12, r.stderr[-2000:]
    password = shown[0]
    assert password not in log.read_text() and password not in r.stdout
    out = admin_login(c, password)
    assert out["exists"] and out["login"] and not out["created"], out
    assert not admin_login(c, password + "x")["login"]
    c.state["password"] = password
    assert hub_get(c, "logo").startswith("<svg")  # provision's built-in logo, from the installed package
    # the run ends by saying how to reach the hub: the NodePort on the node's InternalIP, the port-forward,
    # the first admin by name (its password only in the one line above); the same in --json
    url = f"http://{c.h.address}:30080/"
    assert f"  {url}  NodePort 30080 on node {c.h.address}" in r.stderr, r.stderr[-2000:]
    assert "`sudo provision port-forward start`, then http://127.0.0.1:8080/" in r.stderr
    assert "First admin: admin (password: NATIVE_ADMIN_PASSWORD, or the one shown once" in r.stderr
    assert r.stderr.index("First admin: admin (") > r.stderr.index("Finished in")
    assert s["notes"]["access"] == {"nodeport_urls": [url], "https_url": None, "admin": "admin",
                                    "port_forward": {"command": "provision port-forward start",
                                                     "url": "http://127.0.0.1:8080/"}}
    print(f"\nstage 70 on 1 simulated node: full install (00-70) {seconds:.1f}s, stage 70 "
          f"{stage(s, 70)['seconds']:.1f}s")


def test_default_chart_4_4_0_upgrades_the_release(cluster):
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    r, _log, seconds = c.install(c.env(), select=("--only", "70"))
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    planned = stage(s, 70)["nodes"][c.h.address]["planned"]
    assert any("jupyterhub-4.4.0.tgz" in p and "(chart 4.4.0," in p for p in planned), planned
    assert warnings_of(s, 70) == [] and "predates the security fixes" not in r.stderr
    releases = json.loads(c.ssh("sudo microk8s helm3 list -n jhub -o json").stdout)
    assert [(x["name"], x["chart"], x["revision"], x["status"]) for x in releases] == \
        [("jhub", "jupyterhub-4.4.0", "2", "deployed")]
    hub = next(p for p in c.kube_json("get", "pods", "-n", "jhub")["items"]
               if p["metadata"]["labels"].get("component") == "hub")
    assert hub["spec"]["containers"][0]["image"] == HUB_IMAGE
    public = c.kube_json("get", "service", "proxy-public", "-n", "jhub")
    assert public["spec"]["ipFamilyPolicy"] == "PreferDualStack"  # 4.4.0's own templates
    # the real helm v3.17.1 rendered the real chart: its release history and the chart's own labels
    assert c.ssh("sudo microk8s helm3 version --short").stdout.startswith("v3.17.1+")
    assert "Client Version: v1.30.0" in c.ssh("sudo microk8s kubectl version --client").stdout
    history = json.loads(c.ssh("sudo microk8s helm3 history jhub -n jhub -o json").stdout)
    assert [(x["revision"], x["status"], x["chart"]) for x in history] == \
        [(1, "superseded", "jupyterhub-4.2.0"), (2, "deployed", "jupyterhub-4.4.0")]
    labels = c.kube_json("get", "deployment", "hub", "-n", "jhub")["metadata"]["labels"]
    assert labels["helm.sh/chart"] == "jupyterhub-4.4.0" and labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["app.kubernetes.io/component"] == "hub" and labels["app.kubernetes.io/instance"] == "jhub"
    assert admin_login(c, c.state["password"])["login"]  # the hub database survived the upgrade
    print(f"\nchart upgrade 4.2.0 -> 4.4.0 by stage 70: {seconds:.1f}s")


def test_second_run_changes_nothing(cluster):
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    r, log, seconds = c.install(c.env())
    s = summary(r)
    assert r.returncode == 0 and s["actions_applied"] == 0, r.stderr[-3000:]
    assert {x["status"] for x in s["stages"] if x["number"] <= 70} <= {"unchanged", "skipped"}
    assert stage(s, 70)["status"] == "unchanged"
    assert not SHOWN.search(r.stderr)
    trips = commands(log)
    # one per stage that touches the node (00, 10, 20, 30, 40, 70; 50 has nothing enabled) + the inventory read
    assert trips == 7 and "inventory.yaml" in log.read_text(), log.read_text()[-2000:]
    print(f"\nno-op re-run (00-70): {seconds:.1f}s, {trips} round trips; stage 70 {stage(s, 70)['seconds']:.1f}s")


def test_new_admin_is_applied_by_the_next_run(cluster):
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    r, _log, seconds = c.install(c.env(ADMIN_USERS_CSV="admin,alice"), select=("--only", "70"))
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    planned = stage(s, 70)["nodes"][c.h.address]["planned"]
    assert any(p.startswith("helm upgrade --install jhub") for p in planned), planned
    assert not any("first admin" in p for p in planned)   # the admin exists: no second sign-up
    releases = json.loads(c.ssh("sudo microk8s helm3 list -n jhub -o json").stdout)
    assert releases[0]["revision"] == "3" and releases[0]["status"] == "deployed"
    assert hub_admins(c) == ["admin", "alice"]   # the restarted hub loaded the new values
    assert admin_login(c, c.state["password"])["login"]   # the database (PVC) survived the new hub pod
    print(f"\nvalues change (new admin) applied by stage 70: {seconds:.1f}s")


def test_missing_hub_image_names_pod_status_and_events_then_rerun_converges(cluster):
    from tests.harness.sim import faults

    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    assert faults.remove_image(c.h.path("/"), HUB_IMAGE).returncode == 0
    env = c.env(ADMIN_USERS_CSV="admin,alice,bob", WAIT_TIMEOUT="15s")
    r, _log, _ = c.install(env, select=("--only", "70"))
    assert r.returncode == 5, r.stderr[-3000:]   # VerifyFailed: the hub did not become ready
    err = " ".join(r.stderr.split())
    m = re.search(r"JupyterHub not ready after 15s: hub pod (hub-[a-z0-9]+-[a-z0-9]+): hub: "
                  r"(ErrImagePull|ImagePullBackOff) \(", err)
    assert m, err[-3000:]
    assert "last events:" in err and f'Failed: Failed to pull image "{HUB_IMAGE}"' in err
    assert "provision install --only 20" in err   # the hint says how to get the image back
    r, _log, seconds = c.install(env)
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    assert stage(s, 20)["status"] == "changed"
    assert HUB_IMAGE in c.ssh("sudo microk8s ctr images ls -q").stdout.split()
    assert hub_admins(c) == ["admin", "alice", "bob"]
    print(f"\nre-run after the missing image (stage 20 re-imports, stage 70 converges): {seconds:.1f}s")


def test_release_left_pending_is_refused_with_helms_message_then_recovered(cluster):
    """A `helm upgrade` killed mid-way leaves its new revision pending-upgrade (helm stores it before it applies
    anything): helm itself then refuses with pkg/action/upgrade.go errPending, stage 70 stops with the remedy
    instead of calling helm, and the remedy (`helm rollback`) lets the next run converge."""
    import base64
    import gzip

    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    secrets = c.kube_json("get", "secrets", "-n", "jhub", "-l", "owner=helm,name=jhub")["items"]
    latest = max(secrets, key=lambda x: int(x["metadata"]["labels"]["version"]))
    rel = json.loads(gzip.decompress(base64.b64decode(base64.b64decode(latest["data"]["release"]))))
    rel["version"] += 1
    rel["info"] = dict(rel["info"], status="pending-upgrade", description="Preparing upgrade")
    stuck = {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
             "metadata": {"name": f"sh.helm.release.v1.jhub.v{rel['version']}", "namespace": "jhub",
                          "labels": {"name": "jhub", "owner": "helm", "status": "pending-upgrade",
                                     "version": str(rel["version"])}},
             "data": {"release": base64.b64encode(base64.b64encode(gzip.compress(json.dumps(rel).encode()))).decode()}}
    assert c.ssh("sudo microk8s kubectl apply -f -", json.dumps(stuck)).returncode == 0
    r = c.ssh("sudo microk8s helm3 upgrade --install jhub /var/lib/provision/charts/jupyterhub-4.4.0.tgz -n jhub")
    assert r.returncode == 1
    assert r.stderr == "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n"
    env = c.env(ADMIN_USERS_CSV="admin,alice,bob")
    r, _log, _ = c.install(env, select=("--only", "70"))
    err = " ".join(r.stderr.split())
    assert r.returncode != 0 and "release jhub is stuck in pending-upgrade" in err, err[-3000:]
    assert "run `microk8s helm3 rollback jhub -n jhub`, then re-run provision" in err
    r = c.ssh("sudo microk8s helm3 rollback jhub -n jhub")
    assert (r.returncode, r.stdout) == (0, "Rollback was a success! Happy Helming!\n"), r.stderr
    r, _log, seconds = c.install(env, select=("--only", "70"))
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    releases = json.loads(c.ssh("sudo microk8s helm3 list -n jhub -o json").stdout)
    assert [(x["revision"], x["status"]) for x in releases] == [(str(rel["version"] + 1), "deployed")]
    print(f"\nrun after `helm rollback` of a release left pending-upgrade: {seconds:.1f}s")

"""`provision uninstall` keeps a user's home that lives on hostpath-storage (the small team's default: one node,
SHARED_STORAGE_ENABLED=false), through the REAL hub on one simulated node (tests/harness/sim): `install --to 70`
(native accounts); a student signs up, is approved and starts a server, and KubeSpawner's claim-<user> gets a
hostpath-storage PV (reclaim policy Retain, a directory under /var/snap/microk8s/common/default-storage, which
removing the snap deletes). Her kernel writes a file into her home; the server stops.

`uninstall --yes` must move that directory (and the hub database's) to /var/lib/provision/kept/<same name>, every
file's sha256 unchanged, and name the claims in kept.json. `install` again: she logs in with her old password,
starts a server, and her kernel reads the old file, because her new claim bound to the kept directory (a static
PV with claimRef, stage 70), not to a fresh empty volume.

The tests share one cluster and run in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.test_user_journey_sim import Api, Browser

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "Adm1n-hostpath-pw"
STUDENT_PW = "Stud3nt-hostpath-pw"
NODEPORT = 30080
HOSTPATH = "/var/snap/microk8s/common/default-storage"
KEPT = "/var/lib/provision/kept"
CONTENT = "written by alice's kernel before the uninstall\n"
WRITE = (f"import os; os.makedirs('/home/jovyan/project', exist_ok=True); "
         f"open('/home/jovyan/project/work.txt', 'w').write({CONTENT!r}); "
         f"open('/home/jovyan/blob.bin', 'wb').write(os.urandom(200000))")
READ = "open('/home/jovyan/project/work.txt').read()"


class Cluster:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.url = f"http://{host.address}:{NODEPORT}"
        self.env = base / "hostpath.env"
        gateway = host.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": ADMIN_PW, "NODEPORT": str(NODEPORT),
                "SHARED_STORAGE_ENABLED": "false", "ENABLE_IDLE_CULLER": "false"}
        self.env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        self.env.chmod(0o600)
        self.state: dict = {}

    def provision(self, *args: str, timeout: float = 500) -> subprocess.CompletedProcess:
        h = self.h
        argv = [sys.executable, "-m", "provision", *args, "--env", str(self.env),
                "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                "--log-file", str(self.base / f"{args[0]}.log")]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def install(self) -> subprocess.CompletedProcess:
        return self.provision("install", "--bundle", str(self.bundle), "--to", "70", "--yes")

    def kube(self, *args: str) -> dict | None:
        r = self.h.exec(["microk8s", "kubectl", *args, "-o", "json"], check=False, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def pv_of(self, claim: str) -> dict:
        pvc = self.kube("get", "pvc", claim, "-n", "jhub")
        assert pvc and pvc["status"].get("phase") == "Bound", pvc
        return self.kube("get", "pv", pvc["spec"]["volumeName"])

    def sha256s(self, root: str) -> dict[str, str]:
        """relative path -> sha256 of every file under root on the node."""
        top = self.h.path(root)
        return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(top.rglob("*")) if p.is_file() and not p.is_symlink()}

    def api(self, user: str, password: str) -> Api:
        b = Browser(self.url)
        assert b.login(user, password), f"{user} cannot log in"
        return Api(self.url, b.token(user))

    def diagnose(self, user: str) -> str:
        logs = "".join(f"--- {p.parent.name}\n{p.read_text(errors='replace')[-2000:]}"
                       for p in self.h.path("/var/lib/provision-sim/run/pods").glob("*/container.log"))
        script = (f"microk8s kubectl get pod jupyter-{user} -n jhub -o yaml | tail -30; "
                  "microk8s kubectl get pv,pvc -A; microk8s kubectl get events -n jhub | tail -15")
        r = self.h.exec(["sh", "-c", script], check=False, timeout=60)
        return f"{r.stdout}\n{r.stderr}\n{logs}"

    def start(self, api: Api, user: str) -> None:
        assert api.start_server(user, "cpu") in (201, 202)
        try:
            api.wait_ready(user)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose(user)}") from None

    def stop(self, api: Api, user: str) -> None:
        assert api.call("DELETE", f"/hub/api/users/{user}/server")[0] in (202, 204)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.kube("get", "pod", f"jupyter-{user}", "-n", "jhub"):
            time.sleep(1)
        assert not self.kube("get", "pod", f"jupyter-{user}", "-n", "jhub"), f"{user}'s pod still there"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninstall-hostpath")
    with sim_cluster(base) as (_harness, (h,), bundle):
        c = Cluster(h, bundle, base)
        t = time.monotonic()
        c.state["install"] = (c.install(), time.monotonic() - t)
        yield c


def need(c: Cluster, *keys: str) -> None:
    for k in keys:
        if not c.state.get(k):
            pytest.skip(f"an earlier step failed ({k})")


def test_student_home_is_a_retained_hostpath_volume_written_by_her_kernel(cluster):
    c = cluster
    r, seconds = c.state["install"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sent to the admin" in Browser(c.url).signup("alice", STUDENT_PW)
    admin = Browser(c.url)
    assert admin.login("admin", ADMIN_PW)
    assert admin.req("/hub/authorize/alice")[0] == 302
    api = c.api("alice", STUDENT_PW)
    c.start(api, "alice")
    pv = c.pv_of("claim-alice")   # KubeSpawner's claim, provisioned by hostpath-storage
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain", pv["spec"]
    home = pv["spec"]["hostPath"]["path"]
    assert home.startswith(HOSTPATH + "/"), home
    assert api.run_code("alice", WRITE) == "200000"
    assert api.run_code("alice", READ) == repr(CONTENT)
    c.stop(api, "alice")
    assert c.h.path(f"{home}/project/work.txt").read_text() == CONTENT   # the kernel wrote into the volume
    c.state.update(home=home, db=c.pv_of("hub-db-dir")["spec"]["hostPath"]["path"], ready=True)
    print(f"\ninstall 00-70: {seconds:.1f}s")


def test_uninstall_moves_the_home_and_the_hub_database_out_of_the_snap_unchanged(cluster):
    c = cluster
    need(c, "ready")
    # the hub stopped first, so its database is quiescent when its checksum is taken
    assert c.h.exec(["microk8s", "kubectl", "patch", "deployment", "hub", "-n", "jhub", "-p",
                     '{"spec":{"replicas":0}}'], check=False).returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p for p in (c.kube("get", "pods", "-n", "jhub") or {}).get("items", [])
                                           if p["metadata"]["name"].startswith("hub-")]:
        time.sleep(1)
    home, db = c.state["home"], c.state["db"]
    before = {home: c.sha256s(home), db: c.sha256s(db)}
    assert {"project/work.txt", "blob.bin"} <= set(before[home]), before[home]
    assert any(k.endswith("jupyterhub.sqlite") for k in before[db]), before[db]

    t = time.monotonic()
    r = c.provision("uninstall", "--yes")
    seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-4000:]
    assert c.h.exec(["snap", "list", "microk8s"], check=False).returncode != 0
    assert not c.h.path("/var/snap/microk8s").exists()
    for path, sums in before.items():   # default-storage/<dir> -> kept/<dir>, every byte the same
        kept = f"{KEPT}/{path.rsplit('/', 1)[-1]}"
        assert c.sha256s(kept) == sums, kept
    record = json.loads(c.h.read(f"{KEPT}/kept.json"))
    claims = {(x["namespace"], x["claim"]): x["dir"] for x in record}
    assert claims.get(("jhub", "claim-alice")) == f"{KEPT}/{home.rsplit('/', 1)[-1]}", record
    assert claims.get(("jhub", "hub-db-dir")) == f"{KEPT}/{db.rsplit('/', 1)[-1]}", record
    c.state["uninstalled"] = True
    print(f"\nuninstall: {seconds:.1f}s; home {len(before[home])} files, hub db {len(before[db])} files")


def test_reinstall_binds_her_claim_to_the_kept_home_and_her_kernel_reads_the_old_file(cluster):
    c = cluster
    need(c, "uninstalled")
    t = time.monotonic()
    r = c.install()
    assert r.returncode == 0, r.stderr[-3000:]
    reinstall = time.monotonic() - t
    api = c.api("alice", STUDENT_PW)   # her account and password came back with the hub database
    c.start(api, "alice")
    assert api.run_code("alice", READ) == repr(CONTENT)   # the old file, through her new server's kernel
    pv = c.pv_of("claim-alice")
    kept_home = f"{KEPT}/{c.state['home'].rsplit('/', 1)[-1]}"
    assert pv["spec"]["hostPath"]["path"] == kept_home, pv["spec"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert c.pv_of("hub-db-dir")["spec"]["hostPath"]["path"].startswith(KEPT + "/")
    print(f"\nre-install 00-70: {reinstall:.1f}s")

"""`provision uninstall` on one simulated node (tests/harness/sim), through the real commands: install --to 80
(native accounts, the hub database on hostpath-storage, homes on shared storage at /data/share/homes, workshop
lessons and student work), a student signed up and approved, files in their home; then uninstall.

Data mapping checked by sha256: shared homes and workshop files stay where they are; the hub database moves from
/var/snap/microk8s/common/default-storage/<dir>/ to /var/lib/provision/kept/<dir>/ (same name). A bind mount of
the homes under the kubelet's pod directory stands for a mounted volume: without the unmount-first rule the
snap stand-in's removal (rm -r of /var/snap/microk8s) would delete the homes through it. A process kept inside
that mount makes the first uninstall stop (the mount will not go); once it is gone the re-run converges. Then
`install` again: the old student logs in (the hub database came back) and their files are there; and
`uninstall --keep-cluster`, killed half-way and run again, removes the release but keeps MicroK8s and the users
(the next install binds the hub database again).
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
from tests.e2e.test_user_journey_sim import Browser
from tests.e2e.webtools import self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "Adm1n-uninstall-pw"
STUDENT_PW = "Stud3nt-uninstall-pw"
NODEPORT = 30080
SHARE = "/data/share"
POD_DIR = "/var/snap/microk8s/common/var/lib/kubelet/pods/0000-test/volumes/kubernetes.io~nfs/homes"
KEPT = "/var/lib/provision/kept"


class Cluster:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.url = f"http://{host.address}:{NODEPORT}"
        self.cert, self.key = self_signed(base, "tls", "jupyter.uninstall.example")
        self.state: dict = {}
        gateway = host.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": ADMIN_PW, "NODEPORT": str(NODEPORT),
                "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": f"{SHARE}/homes",
                "WORKSHOP_LESSONS_PATH": f"{SHARE}/lessons", "WORKSHOP_STUDENT_WORK_PATH": f"{SHARE}/work",
                "ENABLE_NGINX_PROXY": "true", "NGINX_PROXY_SERVER_NAME": "jupyter.uninstall.example",
                "NGINX_PROXY_CERT_FILE": str(self.cert), "NGINX_PROXY_KEY_FILE": str(self.key)}
        self.env = base / "uninstall.env"
        self.env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))

    def argv(self, *args: str) -> list[str]:
        h = self.h
        return [sys.executable, "-m", "provision", *args, "--env", str(self.env),
                "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                "--log-file", str(self.base / f"{args[0]}.log")]

    def environ(self) -> dict[str, str]:
        return dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))

    def provision(self, *args: str, timeout: float = 500) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=REPO, env=self.environ(), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def install(self) -> subprocess.CompletedProcess:
        return self.provision("install", "--bundle", str(self.bundle), "--to", "80", "--yes")

    def sh(self, script: str, check: bool = True) -> str:
        r = self.h.exec(["sh", "-c", script], check=False, timeout=120)
        assert r.returncode == 0 or not check, (script, r.stdout, r.stderr)
        return r.stdout

    def kube(self, *args: str) -> dict | None:
        r = self.h.exec(["microk8s", "kubectl", *args, "-o", "json"], check=False, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def hub_db_dir(self) -> str:
        pvc = self.kube("get", "pvc", "hub-db-dir", "-n", "jhub")
        pv = self.kube("get", "pv", pvc["spec"]["volumeName"])
        return pv["spec"]["hostPath"]["path"]

    def sha256s(self, *roots: str) -> dict[str, str]:
        out = {}
        for root in roots:
            top = self.h.path(root)
            for p in sorted(top.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    out[f"{root}/{p.relative_to(top)}"] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    def mounts(self) -> list[str]:
        return [ln.split()[4] for ln in self.sh("cat /proc/self/mountinfo").splitlines()]

    def snap_installed(self) -> bool:
        return self.h.exec(["snap", "list", "microk8s"], check=False).returncode == 0

    def logs_in(self, user: str, password: str) -> bool:
        return Browser(self.url).login(user, password)


def need(c: Cluster, *keys: str) -> None:
    for k in keys:
        if not c.state.get(k):
            pytest.skip(f"an earlier step failed ({k})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninstall")
    with sim_cluster(base) as (_harness, (h,), bundle):
        for d in ("homes", "lessons", "work"):
            assert h.exec(["mkdir", "-p", f"{SHARE}/{d}"]).returncode == 0
        h.path(f"{SHARE}/lessons/01-intro.md").write_text("# Lesson 1\n")
        c = Cluster(h, bundle, base)
        t = time.monotonic()
        c.state["install"] = (c.install(), time.monotonic() - t)
        yield c
        for p in c.state.get("procs", []):
            p.kill()
            p.wait(10)


def test_install_a_student_with_files(cluster):
    c = cluster
    r, seconds = c.state["install"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Retain" in c.sh("microk8s kubectl get storageclass microk8s-hostpath -o jsonpath='{.reclaimPolicy}'")
    b = Browser(c.url)
    assert "sent to the admin" in b.signup("alice", STUDENT_PW)
    admin = Browser(c.url)
    assert admin.login("admin", ADMIN_PW)
    assert admin.req("/hub/authorize/alice")[0] == 302
    assert c.logs_in("alice", STUDENT_PW)
    home = f"{SHARE}/homes/home/alice"
    c.sh(f"mkdir -p {home}/project && printf 'print(42)\\n' > {home}/project/main.py && "
         f"head -c 100000 /dev/urandom > {home}/data.bin && mkdir -p {SHARE}/work/alice && "
         f"echo 'my answer' > {SHARE}/work/alice/answer.txt && chown -R 1000:1000 {home} {SHARE}/work/alice")
    c.state["db_dir"] = c.hub_db_dir()
    assert c.state["db_dir"].startswith("/var/snap/microk8s/common/default-storage/")
    c.state["ready"] = True
    print(f"\ninstall 00-80: {seconds:.1f}s")


def test_without_a_terminal_and_without_yes_nothing_changes(cluster):
    c = cluster
    need(c, "ready")
    r = c.provision("uninstall")
    assert r.returncode == 2, r.stderr
    assert "--yes" in r.stderr
    assert c.snap_installed()


def test_dry_run_shows_what_goes_and_what_is_kept_with_sizes(cluster):
    c = cluster
    need(c, "ready")
    r = c.provision("uninstall", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stderr
    assert "helm release jhub (namespace jhub)" in out and "MicroK8s and its snap" in out, out
    assert "/etc/nginx/sites-available/jupyterhub" in out, out
    db = c.state["db_dir"].rsplit("/", 1)[-1]
    kept = [ln for ln in out.splitlines() if ln.strip().startswith("+ ")]
    assert any(f"hub-db: {KEPT}/{db}" in ln and "KiB" in ln for ln in kept), out   # a size, at its kept path
    assert any(f"shared: {SHARE}/homes" in ln for ln in kept), out
    assert any(f"workshop: {SHARE}/lessons" in ln for ln in kept) and any("student-work" in ln for ln in kept)
    assert c.snap_installed() and c.h.path(c.state["db_dir"]).is_dir()


def test_uninstall_keeps_every_file_and_unmounts_first(cluster):
    c = cluster
    need(c, "ready")
    # the hub is stopped first, so its database is quiescent when its checksum is taken
    c.sh("microk8s kubectl patch deployment hub -n jhub -p '{\"spec\":{\"replicas\":0}}'")
    for _ in range(60):
        if not [p for p in (c.kube("get", "pods", "-n", "jhub") or {}).get("items", [])
                if p["metadata"]["name"].startswith("hub-")]:
            break
        time.sleep(1)
    db = c.state["db_dir"]
    before = c.sha256s(f"{SHARE}/homes", f"{SHARE}/lessons", f"{SHARE}/work", db)
    assert any(k.endswith("jupyterhub.sqlite") for k in before), before
    assert f"{SHARE}/homes/home/alice/data.bin" in before
    # what a kubelet leaves: a volume mounted under its pod directory (here: the shared homes), a process in it,
    # and Calico's links
    c.sh(f"mkdir -p {POD_DIR} && mount --bind {SHARE}/homes {POD_DIR} && "
         "ip link add cni0 type bridge && ip link add vxlan.calico type bridge")
    busy = subprocess.Popen(["nsenter", "-t", str(c.h.init_pid), "-m", "--", "sh", "-c",
                             f"cd {POD_DIR} && exec sleep 600"])
    c.state.setdefault("procs", []).append(busy)
    time.sleep(0.5)

    t = time.monotonic()
    r = c.provision("uninstall", "--yes")
    first = time.monotonic() - t
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"cannot unmount {POD_DIR}" in r.stderr, r.stderr[-2000:]
    assert c.snap_installed() and POD_DIR in c.mounts()   # stopped before the snap went
    assert c.sha256s(f"{SHARE}/homes")                     # nothing deleted

    busy.kill()
    busy.wait(10)
    t = time.monotonic()
    r = c.provision("uninstall", "--yes")
    second = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-4000:]
    assert not c.snap_installed()
    assert not c.h.path("/var/snap/microk8s").exists()
    link = c.h.path("/var/lib/kubelet")
    assert not (os.path.islink(link) and not link.exists()), "dangling /var/lib/kubelet"
    assert not [m for m in c.mounts() if m.startswith(("/var/snap/microk8s", "/var/lib/kubelet"))]
    links = c.sh("ip -o link show")
    assert "cni0" not in links and "vxlan.calico" not in links, links
    assert not c.h.path("/etc/nginx/sites-enabled/jupyterhub").exists()
    kept_db = f"{KEPT}/{db.rsplit('/', 1)[-1]}"   # mapping: default-storage/<dir> -> kept/<dir>
    after = c.sha256s(f"{SHARE}/homes", f"{SHARE}/lessons", f"{SHARE}/work", kept_db)
    assert after == {k.replace(db, kept_db): v for k, v in before.items()}
    record = json.loads(c.h.read(f"{KEPT}/kept.json"))
    assert {(x["namespace"], x["claim"], x["dir"]) for x in record} >= {("jhub", "hub-db-dir", kept_db)}

    r = c.provision("uninstall", "--yes")   # converged: nothing left
    assert r.returncode == 0 and "nothing to remove" in r.stderr, r.stderr[-2000:]
    c.state["uninstalled"] = True
    print(f"\nuninstall: stopped at the busy mount {first:.1f}s, re-run {second:.1f}s")


def test_reinstall_finds_the_old_student_and_their_files(cluster):
    c = cluster
    need(c, "uninstalled")
    t = time.monotonic()
    r = c.install()
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.logs_in("alice", STUDENT_PW), "the hub database did not come back"
    assert c.hub_db_dir().startswith(KEPT + "/")
    assert c.h.path(f"{SHARE}/homes/home/alice/project/main.py").read_text() == "print(42)\n"
    c.state["reinstalled"] = True
    print(f"\nre-install 00-80: {time.monotonic() - t:.1f}s")


def test_keep_cluster_killed_half_way_then_rerun_keeps_microk8s_and_users(cluster):
    c = cluster
    need(c, "reinstalled")
    # killed (SIGKILL, no clean-up) once the release is gone and it waits for the hub's pods to go
    run = subprocess.Popen(c.argv("uninstall", "--keep-cluster", "--yes"), cwd=REPO, env=c.environ(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = run.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "uninstalling" in "".join(seen) and "wait until no pod runs" in line:
            break
    run.kill()
    run.wait(30)
    run.stderr.close()
    assert any("helm release jhub" in ln for ln in seen), "".join(seen)[-2000:]
    r = c.provision("uninstall", "--keep-cluster", "--yes")
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.snap_installed()
    assert "jhub" not in c.sh("microk8s helm3 list -A -q")
    assert not c.h.path("/etc/nginx/sites-enabled/jupyterhub").exists()
    r = c.install()
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.logs_in("alice", STUDENT_PW)

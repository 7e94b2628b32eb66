"""backup -> wipe -> install -> restore on ONE simulated node (tests/harness/sim): the real hub (JupyterHub +
NativeAuthenticator, sqlite on the hub-db-dir PV) installed by `provision install --to 70` with shared storage
on a node path. A student signs up and is approved, has files in her home and student-work folder; `provision
backup --homes` runs while logins keep the hub writing; the machine is wiped; a fresh install no longer knows
her; `provision restore FROM --yes` brings back her account (password, approval) and her files byte for byte,
and a second restore changes nothing.

The tests share one cluster and run in order.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.test_user_journey_sim import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "Adm1n-backup-pw"
STUDENT_PW = "Stud3nt-backup-pw"
NODEPORT = 30080
SHARE = "/data/share"
FILES = {f"{SHARE}/homes/home/alice/notes.txt": b"my notes\n",
         f"{SHARE}/homes/home/alice/data/blob.bin": os.urandom(300_000),
         f"{SHARE}/work/alice/answer.py": b"print(42)\n"}


class Cluster:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.url = f"http://{host.address}:{NODEPORT}"
        self.env = base / "backup.env"
        gateway = host.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": ADMIN_PW, "NODEPORT": str(NODEPORT),
                "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": f"{SHARE}/homes",
                "WORKSHOP_STUDENT_WORK_PATH": f"{SHARE}/work", "ENABLE_IDLE_CULLER": "false"}
        self.env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        self.env.chmod(0o600)
        self.state: dict = {}

    def provision(self, *args: str, timeout: float = 500) -> subprocess.CompletedProcess:
        h = self.h
        argv = [sys.executable, "-m", "provision", *args, "--env", str(self.env),
                "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def install(self) -> subprocess.CompletedProcess:
        return self.provision("install", "--bundle", str(self.bundle), "--to", "70", "--yes",
                              "--log-file", str(self.base / "install.log"))

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def browser(self) -> Browser:
        return Browser(self.url)

    def files(self) -> dict[str, tuple[str, int, int]]:
        """sha256, uid, gid of each test file on the node (missing: absent)."""
        out = {}
        for p in FILES:
            f = self.h.path(p)
            if f.exists():
                st = f.stat()
                out[p] = (hashlib.sha256(f.read_bytes()).hexdigest(), st.st_uid, st.st_gid)
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("backup")
    with sim_cluster(base) as (_harness, (h,), bundle):
        for d in ("homes", "work"):
            assert h.exec(["mkdir", "-p", f"{SHARE}/{d}"]).returncode == 0
        c = Cluster(h, bundle, base)
        t = time.monotonic()
        r = c.install()
        c.state["install"] = (r, time.monotonic() - t)
        yield c


def need(c: Cluster, *keys: str) -> None:
    for k in keys:
        if not c.state.get(k):
            pytest.skip(f"an earlier step failed ({k})")


def test_install_a_student_with_files(cluster):
    c = cluster
    r, seconds = c.state["install"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sent to the admin" in c.browser().signup("alice", STUDENT_PW)
    admin = c.browser()
    assert admin.login("admin", ADMIN_PW)
    assert admin.req("/hub/authorize/alice")[0] == 302
    assert c.browser().login("alice", STUDENT_PW)
    for path, data in FILES.items():   # what her server would have written, as jovyan (1000:100)
        f = c.h.path(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    assert c.h.exec(["chown", "-R", "1000:100", f"{SHARE}/homes/home/alice", f"{SHARE}/work/alice"]).returncode == 0
    c.state["before"] = c.files()
    assert len(c.state["before"]) == len(FILES)
    print(f"\ninstall 00-70: {seconds:.1f}s")


def test_backup_with_homes_while_the_hub_keeps_writing(cluster):
    c = cluster
    need(c, "before")
    out = c.base / "backups"
    out.mkdir()
    r = c.provision("backup", "--to", str(out), "--homes", "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "alice" in r.stderr and "293.0 KiB" in r.stderr and not list(out.iterdir())   # sizes, nothing copied
    stop = threading.Event()
    logins = []

    def keep_logging_in() -> None:   # each login writes the hub's database (last_activity, a new cookie id)
        while not stop.is_set():
            logins.append(c.browser().login("alice", STUDENT_PW))

    writer = threading.Thread(target=keep_logging_in)
    writer.start()
    t = time.monotonic()
    try:
        r = c.provision("backup", "--to", str(out), "--homes", "--log-file", str(c.base / "backup.log"))
    finally:
        stop.set()
        writer.join(60)
    seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert logins and all(logins), logins   # the hub kept answering (and writing) during the backup
    archives = list(out.glob("provision-backup-*.tar.gz"))
    assert len(archives) == 1, list(out.iterdir())
    archive = archives[0]
    assert archive.stat().st_mode & 0o777 == 0o600
    check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=out, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        man = json.loads(tar.extractfile("manifest.json").read())
        assert {"hub/jupyterhub.sqlite", "settings/jhub.env", "homes/alice.tar.gz",
                "student-work/alice.tar.gz"} <= set(names), names
        assert all(tar.getmember(n).mode == 0o600 for n in names)
        db = c.base / "copy.sqlite"
        db.write_bytes(tar.extractfile("hub/jupyterhub.sqlite").read())
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"   # consistent although the hub wrote
    assert {"admin", "alice"} <= {r[0] for r in con.execute("SELECT name FROM users")}
    con.close()
    assert man["hub"]["users"] and "alice" in man["hub"]["approved"]
    assert man["release"]["chart"] == "jupyterhub" and man["hub"]["jupyterhub_version"]
    text = r.stdout + r.stderr + (c.base / "backup.log").read_text()
    for secret in (ADMIN_PW, STUDENT_PW, "$2b$"):   # "$2b$": the bcrypt hashes in the database never pass stdout
        assert secret not in text
    assert r.stderr.index("alice") < r.stderr.index("wrote")   # the sizes table came first
    c.state["archive"] = archive
    print(f"\nbackup --homes with {len(logins)} logins meanwhile: {seconds:.1f}s, {archive.stat().st_size} bytes")


def wipe(c: Cluster) -> str:
    """The machine as a fresh one would look: `provision uninstall --yes --delete-data` where that command
    exists, else what it would do (the snap removed, which takes MicroK8s' data with it, and the homes)."""
    helped = c.provision("uninstall", "--help", timeout=60)
    if helped.returncode == 0 and "--delete-data" in helped.stdout:
        r = c.provision("uninstall", "--yes", "--delete-data", "--log-file", str(c.base / "uninstall.log"))
        assert r.returncode == 0, r.stderr[-3000:]
        how = "provision uninstall --yes --delete-data"
    else:
        r = c.ssh("sudo snap remove microk8s", timeout=300)
        assert r.returncode == 0, r.stderr
        how = "snap remove microk8s (stand-in) + homes deleted"
    r = c.ssh(f"sudo rm -rf {SHARE}/homes/home {SHARE}/work/alice")
    assert r.returncode == 0, r.stderr
    assert c.files() == {}
    return how


def test_wipe_and_fresh_install_forget_the_student(cluster):
    c = cluster
    need(c, "archive")
    t = time.monotonic()
    how = wipe(c)
    r = c.install()
    assert r.returncode == 0, r.stderr[-3000:]
    assert not c.browser().login("alice", STUDENT_PW)
    assert c.browser().login("admin", ADMIN_PW)
    c.state["fresh"] = True
    print(f"\nwipe ({how}) + fresh install: {time.monotonic() - t:.1f}s")


def newer_hub_archive(archive: Path, base: Path) -> Path:
    """The same backup as if a newer JupyterHub had written its database (a schema revision this one lacks)."""
    from stages import _backup as B

    B.read_archive(archive, extract_to=base)
    con = sqlite3.connect(base / "hub" / B.DB_FILE)
    con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    con.commit()
    con.close()
    with tarfile.open(archive) as tar:
        man = json.loads(tar.extractfile(B.MANIFEST).read())
    members = [B.Member(m["name"], base / m["name"], m["what"]) for m in man["members"]]
    man = B.manifest(members, cluster=man["cluster"], created=datetime.datetime.now(datetime.timezone.utc),
                     namespace=man["namespace"], release=man["release"],
                     hub={**man["hub"], "schema_revision": "ffffffffffff", "jupyterhub_version": "9.9.9"},
                     storage=man["storage"], provision_version=man["provision_version"])
    out = base / "newer.tar.gz"
    B.write_archive(out, members, man)
    return out


def test_restore_brings_the_student_and_her_files_back(cluster):
    c = cluster
    need(c, "fresh")
    archive = c.state["archive"]
    newer = newer_hub_archive(archive, c.base / "newer")
    r = c.provision("restore", str(newer), "--yes")
    assert r.returncode == 6 and "cannot downgrade" in r.stderr, r.stderr[-3000:]
    r = c.provision("restore", str(archive), "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "REPLACED" in r.stderr and not c.browser().login("alice", STUDENT_PW)   # the plan only
    t = time.monotonic()
    r = c.provision("restore", str(archive), "--yes", "--log-file", str(c.base / "restore.log"))
    seconds = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.browser().login("alice", STUDENT_PW)   # her password, and approved (NativeAuthenticator refuses others)
    assert c.files() == c.state["before"]   # same bytes, owner 1000:100
    for secret in (ADMIN_PW, STUDENT_PW):
        assert secret not in r.stdout + r.stderr + (c.base / "restore.log").read_text()
    r = c.provision("restore", str(archive), "--yes")   # again: the same state
    assert r.returncode == 0, r.stderr[-3000:]
    assert c.browser().login("alice", STUDENT_PW) and c.files() == c.state["before"]
    print(f"\nrestore: {seconds:.1f}s")

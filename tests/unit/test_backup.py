"""Backup archives and restore's safety checks (stages/_backup.py), pure or against real local sqlite files."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from stages import _backup as B

WHEN = datetime.datetime(2026, 11, 30, 12, 0, 5, tzinfo=datetime.timezone.utc)


def make_archive(tmp_path: Path, **files: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    members = []
    for name, data in (files or {"hub/jupyterhub.sqlite": b"db", "settings/jhub.env": b"X=1\n"}).items():
        p = src / name.replace("/", "__")
        p.write_bytes(data)
        members.append(B.Member(name, p, "test", {"area": "home", "dir": "alice"} if name.startswith("homes/") else None))
    man = B.manifest(members, cluster="node1", created=WHEN, namespace="jhub", release={"chart": "jupyterhub"},
                     hub={"db": "sqlite", "users": ["alice"]}, storage={}, provision_version="0.1.0")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    path = out / B.archive_name("node1", WHEN)
    B.write_archive(path, members, man)
    return path


def rewrite(path: Path, change) -> None:
    """Rebuild the archive with change(name, data) -> data | None (None drops it) and a matching .sha256, so
    only the manifest can catch the change."""
    with tarfile.open(path) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m, data in items:
            new = change(m.name, data)
            if new is None:
                continue
            m.size = len(new)
            tar.addfile(m, io.BytesIO(new))
    path.write_bytes(buf.getvalue())
    B.sidecar(path).write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n")


def test_archive_name_is_dated_in_utc():
    local = WHEN.astimezone(datetime.timezone(datetime.timedelta(hours=8)))
    assert B.archive_name("Node 1/x", local) == "provision-backup-Node-1-x-20261130T120005Z.tar.gz"


def test_archive_roundtrip_modes_manifest_and_sha256sum_format(tmp_path):
    path = make_archive(tmp_path, **{"hub/jupyterhub.sqlite": b"db", "settings/jhub.env": b"SECRET=x\n",
                                     "homes/alice.tar.gz": b"tgz"})
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path) as tar:
        assert tar.getnames()[0] == B.MANIFEST
        assert all(m.mode == 0o600 for m in tar.getmembers())   # jhub.env (secrets) and every other member
    assert subprocess.run(["sha256sum", "-c", B.sidecar(path).name], cwd=path.parent, capture_output=True,
                          check=False).returncode == 0
    dest = tmp_path / "x"
    man = B.read_archive(path, extract_to=dest)
    row = {m["name"]: m for m in man["members"]}["settings/jhub.env"]
    assert row["sha256"] == hashlib.sha256(b"SECRET=x\n").hexdigest() and row["size"] == 9
    assert man["created"] == "2026-11-30T12:00:05Z" and man["provision_version"] == "0.1.0"
    assert (dest / "settings/jhub.env").read_bytes() == b"SECRET=x\n"
    assert (dest / "settings/jhub.env").stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob("*.partial"))


def test_a_flipped_byte_is_refused_before_anything_is_extracted(tmp_path):
    path = make_archive(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "x"
    with pytest.raises(B.BackupError) as e:
        B.read_archive(path, extract_to=dest)
    assert e.value.exit_code == 5 and "sha256 does not match" in e.value.message and "\n" not in e.value.message
    assert not dest.exists()


def test_missing_checksum_file_is_refused(tmp_path):
    path = make_archive(tmp_path)
    B.sidecar(path).unlink()
    with pytest.raises(B.BackupError) as e:
        B.read_archive(path)
    assert e.value.exit_code == 2 and ".sha256 is missing" in e.value.message


@pytest.mark.parametrize("change, why", [
    (lambda n, d: b"tampered" if n == "settings/jhub.env" else d, "does not match its sha256"),
    (lambda n, d: None if n == "hub/jupyterhub.sqlite" else d, "are missing"),
    (lambda n, d: d.replace(b'"settings/jhub.env"', b'"settings/other.env"') if n == B.MANIFEST else d,
     "unexpected member"),
    (lambda n, d: None if n == B.MANIFEST else d, "first member"),
])
def test_members_are_checked_against_the_manifest(tmp_path, change, why):
    path = make_archive(tmp_path)
    rewrite(path, change)
    with pytest.raises(B.BackupError) as e:
        B.read_archive(path)
    assert e.value.exit_code == 5 and why in e.value.message


def test_an_unsafe_folder_name_in_the_manifest_is_refused(tmp_path):
    path = make_archive(tmp_path, **{"homes/alice.tar.gz": b"t"})
    rewrite(path, lambda n, d: d.replace(b'"dir": "alice"', b'"dir": ".."') if n == B.MANIFEST else d)
    with pytest.raises(B.BackupError, match="unsafe member"):
        B.read_archive(path)


def test_truncated_archive_is_corrupt(tmp_path):
    path = make_archive(tmp_path, **{"hub/jupyterhub.sqlite": os.urandom(50_000)})
    data = path.read_bytes()[:-100]
    path.write_bytes(data)
    B.sidecar(path).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    with pytest.raises(B.BackupError) as e:
        B.read_archive(path)
    assert e.value.exit_code == 5


def test_member_names_for_odd_folder_names():
    assert B.member_name("homes", "alice", 1) == "homes/alice.tar.gz"
    assert B.member_name("homes", "a b;$(x)", 7) == "homes/dir-0007.tar.gz"
    assert B.member_name("homes", ".hidden", 2) == "homes/dir-0002.tar.gz"
    assert B.safe_dir("a b;$(x)") and not B.safe_dir("..") and not B.safe_dir("a/b")


# ---------------------------------------------------------------------------------------------
# The code that runs in the hub pod, run here against real sqlite files


def hub_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('abc');"
                      "CREATE TABLE users (name TEXT, n INTEGER); INSERT INTO users VALUES ('alice', 0), ('bob', 0);"
                      "CREATE TABLE users_info (username TEXT, is_authorized BOOLEAN);"
                      "INSERT INTO users_info VALUES ('alice', 1), ('bob', 0);"
                      "CREATE TABLE blob (b BLOB);")
    con.executemany("INSERT INTO blob VALUES (?)", [(os.urandom(4000),) for _ in range(500)])
    con.commit()
    con.close()


def test_online_copy_is_consistent_while_another_process_writes(tmp_path):
    db = tmp_path / "jupyterhub.sqlite"
    hub_db(db)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        con = sqlite3.connect(db, timeout=30)
        while not stop.is_set():
            con.execute("UPDATE users SET n = n + 1")
            con.execute("INSERT INTO blob VALUES (?)", (os.urandom(4000),))
            con.commit()
            writes[0] += 1
        con.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-c", B.HUB_BACKUP_PY, str(db)], capture_output=True, text=True,
                           timeout=120, check=True)
    finally:
        stop.set()
        t.join()
    meta, data = B.parse_backup_output(r.stdout)
    assert writes[0] > 0
    assert meta["integrity"] == "ok" and meta["users"] == ["alice", "bob"] and meta["approved"] == ["alice"]
    assert meta["schema_revision"] == "abc" and meta["jupyterhub_version"]
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(data)
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_damaged_transfer_and_failed_integrity_are_refused():
    data = b"x" * 10
    good = {"size": 10, "sha256": hashlib.sha256(data).hexdigest(), "integrity": "ok"}
    import base64

    body = base64.encodebytes(data).decode()
    assert B.parse_backup_output(json.dumps(good) + "\n" + body)[1] == data
    with pytest.raises(B.BackupError, match="arrived damaged"):
        B.parse_backup_output(json.dumps({**good, "size": 11}) + "\n" + body)
    with pytest.raises(B.BackupError, match="integrity_check"):
        B.parse_backup_output(json.dumps({**good, "integrity": "*** page 3 is never used"}) + "\n" + body)


def test_database_restore_replaces_atomically_and_keeps_the_old_one_on_a_bad_copy(tmp_path):
    new = tmp_path / "new.sqlite"
    hub_db(new)
    data = new.read_bytes()
    vol = tmp_path / "vol"
    vol.mkdir()
    target = vol / B.DB_FILE
    target.write_bytes(b"old database")
    (vol / (B.DB_FILE + "-journal")).write_bytes(b"stale")

    def run(sha: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", B.DB_RESTORE_PY, str(target), sha], input=data,
                              capture_output=True, timeout=60, check=False)

    r = run("0" * 64)
    assert r.returncode == 3 and target.read_bytes() == b"old database"
    r = run(hashlib.sha256(data).hexdigest())
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == data and not (vol / (B.DB_FILE + "-journal")).exists()
    assert sorted(p.name for p in vol.iterdir()) == [B.DB_FILE]
    assert run(hashlib.sha256(data).hexdigest()).returncode == 0 and target.read_bytes() == data   # idempotent


def test_compat_refuses_a_database_from_a_newer_jupyterhub():
    installed = {"jupyterhub_version": "5.3.0", "revisions": ["4621fec11365", "3c2384c5aae1"]}
    assert B.compat_problem({"schema_revision": "3c2384c5aae1"}, installed) == ""   # older: hub upgrades it
    msg = B.compat_problem({"schema_revision": "ffff00001111", "jupyterhub_version": "6.0.0"}, installed)
    assert "6.0.0" in msg and "5.3.0" in msg and "downgrade" in msg


def hub_deployment() -> dict:
    return {"metadata": {"name": "hub", "namespace": "jhub"},
            "spec": {"replicas": 1, "template": {"metadata": {"labels": {"component": "hub"}}, "spec": {
                "nodeSelector": {"kubernetes.io/os": "linux"}, "securityContext": {"fsGroup": 1000},
                "tolerations": [{"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "core"}],
                "containers": [{"name": "hub", "image": "quay.io/jupyterhub/k8s-hub:4.2.0",
                                "securityContext": {"runAsUser": 1000},
                                "volumeMounts": [{"name": "config", "mountPath": "/usr/local/etc/jupyterhub"},
                                                 {"name": "pvc", "mountPath": "/srv/jupyterhub"}]}],
                "volumes": [{"name": "config", "configMap": {"name": "hub"}},
                            {"name": "pvc", "persistentVolumeClaim": {"claimName": "hub-db-dir"}}]}}}}


def test_restore_pod_mounts_the_hub_volume_with_the_hubs_image_and_user():
    pod, path = B.restore_pod(hub_deployment())
    assert path == "/srv/jupyterhub/jupyterhub.sqlite"
    spec = pod["spec"]
    c = spec["containers"][0]
    assert c["image"] == "quay.io/jupyterhub/k8s-hub:4.2.0" and c["securityContext"] == {"runAsUser": 1000}
    assert c["volumeMounts"] == [{"name": "hub-db", "mountPath": "/srv/jupyterhub"}]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hub-db-dir"
    assert spec["tolerations"] and spec["securityContext"] == {"fsGroup": 1000}
    assert "component" not in pod["metadata"]["labels"]   # the hub's Service must not send users to it
    dep = hub_deployment()
    dep["spec"]["template"]["spec"]["volumes"].pop()
    with pytest.raises(B.BackupError) as e:
        B.restore_pod(dep)
    assert e.value.exit_code == 6


def test_external_database_password_only_in_the_0600_file():
    pw = "p@ss:w\\ord\"$(x)"
    pg = B.external_db("postgresql://jhub:p%40ss%3Aw%5Cord%22%24%28x%29@db.lab:5433/hub")
    assert pg.password == pw and pg.port == 5433 and pg.database == "hub"
    assert pg.credentials() == "db.lab:5433:hub:jhub:p@ss\\:w\\\\ord\"$(x)\n"
    for argv in (pg.dump_argv("/s/cred", "/s/out"), pg.restore_argv("/s/cred", "/s/in")):
        assert not any(pw in a or "p@ss" in a for a in argv) and "PGPASSFILE=/s/cred" in argv
    my = B.external_db("mysql+pymysql://jhub:p%40ss%3Aw%5Cord%22%24%28x%29@db.lab/hub")
    assert 'password="p@ss:w\\\\ord\\"$(x)"' in my.credentials()
    for argv in (my.dump_argv("/s/cred", "/s/out"), my.restore_argv("/s/cred", "/s/in")):
        assert not any("p@ss" in a for a in argv)
    with pytest.raises(B.BackupError) as e:
        B.external_db("oracle://u:p@h/db")
    assert e.value.exit_code == 2


def test_where_user_folders_live():
    from provision.config import load_settings

    s = load_settings(None, {"SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/mnt/ceph/jhub",
                             "WORKSHOP_STUDENT_WORK_PATH": "/mnt/ceph/work"}, check_files=False)
    assert B.home_parents(s) == {"home": "/mnt/ceph/jhub/home", "student-work": "/mnt/ceph/work"}
    assert B.storage_kind(s) == "shared" and B.homes_refusal(s) == ""
    nfs = load_settings(None, {"SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_TYPE": "nfs",
                               "NFS_SERVER": "nfs.lab", "SHARED_STORAGE_PATH": "/export/jhub"}, check_files=False)
    assert "NFS" in B.homes_refusal(nfs)
    pvs = {"items": [
        {"metadata": {"name": "pv1"},
         "spec": {"claimRef": {"namespace": "jhub", "name": "claim-alice"}, "hostPath": {"path": "/v/a"}}},
        {"metadata": {"name": "pv2"},
         "spec": {"claimRef": {"namespace": "jhub", "name": "hub-db-dir"}, "hostPath": {"path": "/v/db"}}},
        {"metadata": {"name": "pv3"},
         "spec": {"claimRef": {"namespace": "other", "name": "claim-bob"}, "hostPath": {"path": "/v/b"}}}]}
    assert B.claim_homes(pvs, s) == {"alice": "/v/a"}


def test_restore_of_a_corrupt_archive_is_one_line_and_touches_nothing(tmp_path, monkeypatch):
    from provision.cli import cli

    path = make_archive(tmp_path)
    data = bytearray(path.read_bytes())
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    env = tmp_path / "jhub.env"
    env.write_text("AUTH_MODE=native\n")
    contacted = []

    class Inventory:   # hosts connect lazily: only using one would reach the node
        control = "node1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def host(self, node):
            contacted.append(node)
            raise AssertionError("the control node was contacted")

    monkeypatch.setattr("provision.inventory.open_inventory", lambda *a, **k: Inventory())
    r = CliRunner().invoke(cli, ["restore", str(path), "--env", str(env), "--yes", "--log-file",
                                 str(tmp_path / "r.log")])
    assert r.exit_code == 5, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sha256 does not match" in errors[0]
    assert contacted == []


def test_a_restore_pod_that_cannot_start_is_told_from_one_still_starting():
    starting = {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "restore", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert not B.pod_stuck(starting) and not B.pod_stuck({"status": {"phase": "Running"}})
    assert B.pod_stuck({"status": {"phase": "Pending", "containerStatuses": [
        {"name": "restore", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}})
    assert B.pod_stuck({"status": {"phase": "Failed"}})


def test_restore_targets_follow_the_current_settings():
    from provision.commands.backup import _folder_targets
    from provision.config import load_settings

    folders = [{"name": "homes/alice.tar.gz", "area": "home", "dir": "alice"},
               {"name": "homes/bob.tar.gz", "area": "home", "dir": "bob"},
               {"name": "student-work/alice.tar.gz", "area": "student-work", "dir": "alice"}]
    shared = load_settings(None, {"SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/new/homes",
                                  "WORKSHOP_STUDENT_WORK_PATH": "/new/work"}, check_files=False)
    assert _folder_targets(None, shared, {}, folders) == (
        {"homes/alice.tar.gz": "/new/homes/home/alice", "homes/bob.tar.gz": "/new/homes/home/bob",
         "student-work/alice.tar.gz": "/new/work/alice"}, [])
    single = load_settings(None, {"WORKSHOP_STUDENT_WORK_PATH": "/w"}, check_files=False)
    pvs = {"items": [{"metadata": {"name": "pv1"}, "spec": {"claimRef": {"namespace": "jhub", "name": "claim-alice"},
                               "hostPath": {"path": "/var/snap/microk8s/common/default-storage/a"}}}]}
    targets, missing = _folder_targets(None, single, {"pvs": pvs}, folders)
    assert targets["homes/alice.tar.gz"] == "/var/snap/microk8s/common/default-storage/a" and missing == ["bob"]
    with pytest.raises(B.BackupError) as e:
        _folder_targets(None, load_settings(None, {}, check_files=False), {}, folders[2:])
    assert "WORKSHOP_STUDENT_WORK_PATH" in e.value.hint

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


# ---------------------------------------------------------------------------------------------
# The usage portal's records (ENABLE_USAGE_PORTAL): members, the refusal, and the node-side code run for real


def usage_settings(**keys: str):
    from provision.config import load_settings

    return load_settings(None, {"ENABLE_USAGE_PORTAL": "true", **keys}, check_files=False)


def test_usage_members_are_listed_and_verified_like_the_others(tmp_path):
    path = make_archive(tmp_path, **{"hub/jupyterhub.sqlite": b"db", "settings/jhub.env": b"X=1\n",
                                     B.USAGE_SQLITE: b"usage db"})
    assert path.stat().st_mode & 0o777 == 0o600
    man = B.read_archive(path, extract_to=tmp_path / "x")
    row = B.usage_member(man)
    assert row["name"] == "usage/usage.sqlite" and row["size"] == 8
    assert row["sha256"] == hashlib.sha256(b"usage db").hexdigest()
    assert (tmp_path / "x" / B.USAGE_SQLITE).stat().st_mode & 0o777 == 0o600
    (tmp_path / "old").mkdir()
    assert B.usage_member(B.read_archive(make_archive(tmp_path / "old"))) is None   # an archive from before
    src = tmp_path / "u"
    src.write_bytes(b"d")
    man = B.manifest([B.Member(B.USAGE_DUMP, src, "usage")], cluster="c", created=WHEN, namespace="jhub",
                     release=None, hub={}, storage={}, provision_version="0", usage={"db": "postgres"})
    assert man["usage"] == {"db": "postgres"} and man["members"][0]["name"] == "usage/usage.dump"
    assert "usage" not in B.manifest([], cluster="c", created=WHEN, namespace="jhub", release=None, hub={},
                                     storage={}, provision_version="0")
    for bad in ("usage/../x", "usage/a/b", "usages/x"):
        with pytest.raises(ValueError):
            B.manifest([B.Member(bad, src, "x")], cluster="c", created=WHEN, namespace="n", release=None, hub={},
                       storage={}, provision_version="0")


def test_where_the_usage_records_are_follows_the_settings():
    from provision.config import load_settings
    from provision.jupyterhub.portal.store import DEFAULT_DB_PATH

    assert B.usage_db(load_settings(None, {}, check_files=False)) is None   # no portal: nothing to keep
    assert B.usage_db(usage_settings()) == B.UsageDb("sqlite", DEFAULT_DB_PATH)
    assert B.usage_db(usage_settings(USAGE_DB_URL="sqlite:////srv/usage/u.db")).path == "/srv/usage/u.db"
    pg = B.usage_db(usage_settings(USAGE_DB_URL="postgresql+psycopg://usage:pw%3Ax@db.lab:5433/usage"))
    assert pg.kind == "postgres" and pg.member == B.USAGE_DUMP and pg.ext.database == "usage"
    assert pg.ext.password == "pw:x" and "pw" not in pg.describe()
    for argv in (pg.ext.dump_argv("/s/cred", "/s/out"), pg.ext.restore_argv("/s/cred", "/s/in")):
        assert not any("pw" in a for a in argv) and "PGPASSFILE=/s/cred" in argv   # the password only in the file
    with pytest.raises(B.BackupError) as e:
        B.usage_db(usage_settings(USAGE_DB_URL="sqlite:///relative.db"))
    assert e.value.exit_code == 2


def test_restore_refuses_usage_records_the_settings_have_no_portal_for():
    from provision.config import load_settings

    man = {"members": [{"name": "hub/jupyterhub.sqlite"}, {"name": B.USAGE_SQLITE, "sha256": "0" * 64}]}
    off = load_settings(None, {}, check_files=False)
    with pytest.raises(B.BackupError) as e:
        B.usage_restore_target(man, off, skip=False)
    assert e.value.exit_code == 6
    assert "ENABLE_USAGE_PORTAL=false" in str(e.value) and "--skip-usage" in e.value.hint
    assert B.usage_restore_target(man, off, skip=True) is None
    assert B.usage_restore_target(man, usage_settings(), skip=False).path == "/var/lib/provision/usage.db"
    assert B.usage_restore_target({"members": man["members"][:1]}, off, skip=False) is None   # none: as before
    with pytest.raises(B.BackupError) as e:   # a SQLite copy is not pg_restored into PostgreSQL
        B.usage_restore_target(man, usage_settings(USAGE_DB_URL="postgresql://u:p@db/usage"), skip=False)
    assert e.value.exit_code == 6 and "PostgreSQL" in str(e.value)


class _NoNode:   # hosts connect lazily: only using one would reach the node
    control = "node1"

    def __init__(self):
        self.contacted = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def host(self, node):
        self.contacted.append(node)
        raise RuntimeError("the control node was contacted")


def test_restore_with_usage_records_and_no_portal_is_one_line_exit_6_before_the_node(tmp_path, monkeypatch):
    from provision.cli import cli

    path = make_archive(tmp_path, **{"hub/jupyterhub.sqlite": b"db", "settings/jhub.env": b"X=1\n",
                                     B.USAGE_SQLITE: b"usage db"})
    env = tmp_path / "jhub.env"
    env.write_text("AUTH_MODE=native\nENABLE_USAGE_PORTAL=false\n")
    inv = _NoNode()
    monkeypatch.setattr("provision.inventory.open_inventory", lambda *a, **k: inv)
    args = ["restore", str(path), "--env", str(env), "--yes", "--log-file", str(tmp_path / "r.log")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 6, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "usage portal's records" in errors[0], r.output
    assert "--skip-usage" in r.output and inv.contacted == []
    r = CliRunner().invoke(cli, [*args, "--skip-usage"])   # past the refusal: on to the node
    assert inv.contacted == ["node1"], r.output


def portal_db(path: Path):
    """The usage portal's own database (its Store: real schema, WAL), with sessions, quotas and a group."""
    from provision.jupyterhub.portal.store import Store

    store = Store.open(f"sqlite:///{path}")
    t0 = datetime.datetime(2026, 11, 30, 8, tzinfo=datetime.timezone.utc)
    for i in range(20):
        store.add_session(username=f"user{i % 4}", start_time=t0, end_time=t0 + datetime.timedelta(hours=2),
                          gpu=i % 3, cpu_cores=2, memory_gib=8)
    store.add_session(username="alice", start_time=t0, gpu=2)   # running
    store.set_quota("user", "alice", gpu=4, gpu_hours=100)
    store.set_quota("default", "", gpu=1)
    store.set_group_members("lab-a", ["alice", "user1"])
    return store


class _Console:
    def __init__(self):
        self.lines = []

    def line(self, text, *style):
        self.lines.append(text)

    warn = line


def test_usage_sqlite_backup_and_restore_run_for_real_on_a_node(tmp_path):
    """_copy_usage and _put_usage through a real LocalHost and staging folder: USAGE_BACKUP_PY copies the
    portal's WAL database while the portal keeps recording, USAGE_RESTORE_PY puts it back atomically."""
    from provision.commands.backup import _copy_usage, _put_usage, staging
    from provision.hosts.local import LocalHost

    live = tmp_path / "lib" / "usage.db"
    live.parent.mkdir()
    portal = portal_db(live)
    stop = threading.Event()
    added = [0]

    def collector() -> None:   # the portal keeps recording while the copy is taken
        from provision.jupyterhub.portal.store import Store

        s = Store.open(f"sqlite:///{live}")
        while not stop.is_set():
            s.add_session(username="bob", start_time=datetime.datetime.now(datetime.timezone.utc), gpu=1)
            added[0] += 1
        s.close()

    host, console, work = LocalHost("node1"), _Console(), tmp_path / "work"
    work.mkdir()
    members: list = []
    writer = threading.Thread(target=collector)
    writer.start()
    try:
        with staging(host) as st:
            meta = _copy_usage(console, host, st, B.UsageDb("sqlite", str(live)), work, members)
    finally:
        stop.set()
        writer.join()
    assert added[0] > 0
    assert [m.name for m in members] == [B.USAGE_SQLITE]
    copy = members[0].source
    assert copy.stat().st_mode & 0o777 == 0o600 and copy.read_bytes()[18:20] == b"\x01\x01"   # one file, no WAL
    assert meta["db"] == "sqlite" and meta["quotas"] == 2 and meta["groups"] == 1 and meta["sessions"] >= 21
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM sessions").fetchone()[0] == meta["sessions"]
    con.close()
    assert any("usage portal:" in ln and "2 quotas" in ln for ln in console.lines)
    portal.close()

    # restore onto a machine whose portal has other records (and the WAL files of its last run)
    man = B.manifest(members, cluster="c", created=WHEN, namespace="jhub", release=None, hub={}, storage={},
                     provision_version="0", usage=meta)
    target = tmp_path / "new" / "usage.db"
    target.parent.mkdir(parents=True, mode=0o700)
    other = portal_db(target)
    other.add_session(username="stranger", start_time=WHEN)
    assert Path(str(target) + "-wal").exists()   # the running portal's WAL
    other.close()
    Path(str(target) + "-wal").write_bytes(b"stale")
    before = target.read_bytes()
    r = subprocess.run([sys.executable, "-c", B.USAGE_RESTORE_PY, str(target), "0" * 64, str(copy)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 3 and "damaged" in r.stdout and target.read_bytes() == before   # a bad copy leaves the old database as it was
    for _ in range(2):   # idempotent
        with staging(host) as st:
            _put_usage(console, host, st, B.UsageDb("sqlite", str(target)), man, work)
        assert target.read_bytes() == copy.read_bytes()
        assert target.stat().st_mode & 0o777 == 0o600 and target.stat().st_uid == os.geteuid()
        assert sorted(p.name for p in target.parent.iterdir()) == ["usage.db"]   # no -wal, no temporary file
    assert "not installed" in console.lines[-1]   # no provision-usage-portal.service here: nothing to start
    from provision.jupyterhub.portal.store import Store

    s = Store.open(f"sqlite:///{target}")
    assert s.get_quota("user", "alice")["gpu"] == 4 and s.list_groups() == {"lab-a": ["alice", "user1"]}
    assert "stranger" not in {x["username"] for x in s.list_sessions()}
    s.close()
    fresh = tmp_path / "fresh" / "usage.db"   # a machine where the portal never ran
    r = subprocess.run([sys.executable, "-c", B.USAGE_RESTORE_PY, str(fresh), B.sha256_file(copy), str(copy)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fresh.parent.stat().st_mode & 0o777 == 0o700 and fresh.stat().st_mode & 0o777 == 0o600
    with staging(host) as st:   # no database yet: nothing in the archive, said plainly
        assert _copy_usage(console, host, st, B.UsageDb("sqlite", str(tmp_path / "none.db")), work, []) is None
    assert "no database at" in console.lines[-1] and not (tmp_path / "none.db").exists()

"""What `provision backup` copies and how `provision restore` puts it back (the domain; commands/backup.py
drives it). Not a stage: discover() skips modules starting with "_".

The archive: ONE file, DIR/provision-backup-<cluster>-<UTC yyyymmddTHHMMSSZ>.tar.gz (mode 0600: it holds
jhub.env's secrets and the users' password hashes), and beside it <archive>.sha256 in `sha256sum` format, so
`sha256sum -c` checks it anywhere. One file because an admin copies it off the machine in one go and a partial
copy is caught by its checksum. Members, each 0600 and listed with size and sha256 in manifest.json (the first
member):

  manifest.json                   versions, time, what each member is, sizes, sha256
  hub/jupyterhub.sqlite           the hub database, a consistent copy (sqlite online backup API, in the hub pod)
  hub/database.dump | .sql        an external database: pg_dump custom format | mysqldump
  settings/jhub.env               the settings file used (holds secrets)
  homes/<dir>.tar.gz              with --homes: one user's home (shared storage home/<dir>, or claim-<dir>)
  student-work/<dir>.tar.gz       with --homes: one student's folder under WORKSHOP_STUDENT_WORK_PATH
  usage/usage.sqlite              ENABLE_USAGE_PORTAL=true: the usage portal's records (sessions, quotas,
                                  groups), a consistent copy (sqlite online backup API, on the control node)
  usage/usage.dump                ... or, with USAGE_DB_URL=postgresql://..., its pg_dump (custom format)

Not in it: the hub's generated Secret (cookie secret, proxy token, CryptKeeper keys). A fresh install makes
new ones and nothing a user keeps depends on them: NativeAuthenticator stores bcrypt hashes in the database
(no key), API tokens are stored hashed in the database, a new cookie secret only means logging in again, the
proxy token is between hub and proxy; CryptKeeper keys would matter only with auth_state enabled, which
provision never enables. Keeping them out keeps the archive's secrets to what jhub.env already holds.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from provision import facts as F
from provision.errors import EXIT_CONFIG, EXIT_REFUSED, EXIT_VERIFY_FAILED, ProvisionError

FORMAT = 1
KIND = "provision-backup"
MANIFEST = "manifest.json"
PREFIX = "provision-backup-"
DB_FILE = "jupyterhub.sqlite"  # z2jh sqlite-pvc: sqlite:///jupyterhub.sqlite in the hub's /srv/jupyterhub
HUB_LABEL = "component=hub"
HUB_DEPLOYMENT = "hub"
RESTORE_POD = "provision-restore-db"
UID, GID = 1000, 100  # jovyan:users, as the z2jh singleuser image expects its home
USAGE_SQLITE = "usage/usage.sqlite"  # the usage portal's SQLite database (stage 75's, or USAGE_DB_URL=sqlite:)
USAGE_DUMP = "usage/usage.dump"  # its PostgreSQL database (USAGE_DB_URL=postgresql://...), pg_dump custom format
_MEMBER = re.compile(r"(hub|settings|homes|student-work|usage)/[A-Za-z0-9@._+-]{1,200}")
_DIR = re.compile(r"[^/\x00]{1,255}")


class BackupError(ProvisionError):
    """A backup or restore problem: one line, a hint, an exit code."""


def corrupt(message: str) -> BackupError:
    return BackupError(message, "the archive is damaged or incomplete: copy it again (with its .sha256), or use "
                       "another backup; nothing was changed", exit_code=EXIT_VERIFY_FAILED)


# ---------------------------------------------------------------------------------------------
# Names, sizes, checksums (pure)


def archive_name(cluster: str, when: datetime.datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", cluster).strip("-.") or "cluster"
    return f"{PREFIX}{safe}-{when.astimezone(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.tar.gz"


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def member_name(area: str, dirname: str, index: int) -> str:
    """homes/alice.tar.gz; a directory name outside the safe set gets a numbered name (the manifest keeps the
    real one in "dir")."""
    base = dirname if re.fullmatch(r"[A-Za-z0-9@._+-]{1,150}", dirname) and not dirname.startswith(".") \
        else f"dir-{index:04d}"
    return f"{area}/{base}.tar.gz"


@dataclass(frozen=True)
class Member:
    """One archive member: its name, the local file holding it, and what it is (for manifest.json)."""

    name: str
    source: Path
    what: str
    extra: Mapping[str, Any] | None = None


def manifest(members: Sequence[Member], *, cluster: str, created: datetime.datetime, namespace: str,
             release: Mapping[str, Any] | None, hub: Mapping[str, Any], storage: Mapping[str, Any],
             provision_version: str, checksum: Callable[[Path], str] = sha256_file,
             usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """manifest.json: versions, time, and per member its size and sha256 (computed here from the files); with
    usage (the portal's database: kind and counts), a "usage" entry."""
    rows = []
    for m in members:
        if not _MEMBER.fullmatch(m.name) or m.name.count("..") or m.name == MANIFEST:
            raise ValueError(f"bad member name {m.name!r}")
        rows.append({"name": m.name, "what": m.what, "size": m.source.stat().st_size, "sha256": checksum(m.source),
                     **dict(m.extra or {})})
    return {"format": FORMAT, "kind": KIND, "provision_version": provision_version,
            "created": created.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cluster": cluster, "namespace": namespace, "release": dict(release or {}), "hub": dict(hub),
            "storage": dict(storage), "members": rows, **({"usage": dict(usage)} if usage is not None else {})}


def write_archive(path: Path, members: Sequence[Member], man: Mapping[str, Any],
                  progress: Callable[[str, int, int], None] | None = None) -> str:
    """Write the tar.gz (0600 from its first byte, under a temporary name renamed at the end) and the .sha256
    beside it; returns the archive's sha256. Every member is 0600 root-free (uid/gid 0 names dropped)."""
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = json.dumps(man, indent=2, sort_keys=True).encode()
            tar.addfile(_info(MANIFEST, len(data), man["created"]), _Bytes(data))
            for m in members:
                size = m.source.stat().st_size
                with open(m.source, "rb") as f:
                    tar.addfile(_info(m.name, size, man["created"]),
                                _Progress(f, size, (lambda n, s=size, name=m.name: progress(name, n, s))
                                          if progress else None))
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    side = sidecar(path)
    side.write_text(f"{digest}  {path.name}\n")
    side.chmod(0o644)
    return digest


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _info(name: str, size: int, created: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = size, 0o600, 0, 0
    info.mtime = int(datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
                     .replace(tzinfo=datetime.timezone.utc).timestamp())
    return info


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:] if n < 0 else self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


class _Progress:
    """A file reader that reports how far it got (the console prints every 10 %)."""

    def __init__(self, f: Any, size: int, report: Callable[[int], None] | None):
        self.f, self.size, self.done, self.report = f, size, 0, report

    def read(self, n: int = -1) -> bytes:
        out = self.f.read(n)
        self.done += len(out)
        if self.report:
            self.report(self.done)
        return out


def read_archive(path: Path, extract_to: Path | None = None) -> dict[str, Any]:
    """Verify the archive against its .sha256, then every member against manifest.json (no member missing, none
    extra, only regular files with safe names); with extract_to, write each member there (0600) in the same pass.
    Returns the manifest. Raises BackupError (exit 5 for a damaged archive) before anything else is touched."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file", "give the .tar.gz that `provision backup` wrote",
                          exit_code=EXIT_CONFIG)
    side = sidecar(path)
    try:
        want = side.read_text().split()[0].lower()
    except (OSError, IndexError):
        raise BackupError(f"{side.name} is missing beside {path.name}: the archive cannot be verified",
                          "copy the .sha256 file that `provision backup` wrote next to the archive",
                          exit_code=EXIT_CONFIG) from None
    if sha256_file(path) != want:
        raise corrupt(f"{path.name}: sha256 does not match {side.name}")
    try:
        return _read_members(path, extract_to)
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError, TypeError) as e:
        raise corrupt(f"{path.name}: cannot be read ({type(e).__name__}: {str(e)[:120]})") from None


def _read_members(path: Path, extract_to: Path | None) -> dict[str, Any]:
    man: dict[str, Any] | None = None
    listed: dict[str, Mapping[str, Any]] = {}
    seen: set[str] = set()
    with tarfile.open(path, mode="r:gz") as tar:
        for info in tar:
            if man is None:
                if info.name != MANIFEST or not info.isfile():
                    raise corrupt(f"{path.name}: the first member is not {MANIFEST}")
                man = json.loads(tar.extractfile(info).read())  # type: ignore[union-attr]
                if man.get("kind") != KIND or man.get("format") != FORMAT:
                    raise corrupt(f"{path.name}: not a provision backup (format {man.get('format')!r})")
                listed = {m["name"]: m for m in man["members"]}
                continue
            if info.name not in listed or info.name in seen or not info.isfile():
                raise corrupt(f"{path.name}: unexpected member {info.name!r}")
            seen.add(info.name)
            h = hashlib.sha256()
            src = tar.extractfile(info)
            out = None
            if extract_to is not None:
                dest = extract_to / info.name
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
            try:
                while chunk := src.read(1 << 20):  # type: ignore[union-attr]
                    h.update(chunk)
                    if out:
                        out.write(chunk)
            finally:
                if out:
                    out.close()
            if h.hexdigest() != listed[info.name]["sha256"]:
                raise corrupt(f"{path.name}: member {info.name} does not match its sha256 in {MANIFEST}")
    if man is None:
        raise corrupt(f"{path.name}: empty archive")
    missing = sorted(set(listed) - seen)
    if missing:
        raise corrupt(f"{path.name}: members listed in {MANIFEST} are missing: {', '.join(missing[:5])}")
    for m in man["members"]:
        if not _MEMBER.fullmatch(m["name"]) or ".." in m["name"] or ("dir" in m and not safe_dir(m["dir"])):
            raise corrupt(f"{path.name}: unsafe member {m['name']!r}")
    return man


def safe_dir(name: str) -> bool:
    """A user folder name restore may create: one path component, never . or .."""
    return bool(_DIR.fullmatch(name)) and name not in (".", "..")


# ---------------------------------------------------------------------------------------------
# Facts on the control node (one round trip) and what they mean


def hub_probes(ns: str) -> list[F.Probe]:
    from stages._microk8s import kube_probe, mk

    return [kube_probe("hub_pods", "pods", "-n", ns, "-l", HUB_LABEL),
            kube_probe("hub_deploy", "deployment", HUB_DEPLOYMENT, "-n", ns),
            kube_probe("pvs", "pv"),
            F.Probe("releases", "timeout 60 " + F.quoted(" ".join(mk("helm3", "list", "-n", "{ns}", "-o", "json")),
                                                          ns=ns) + " 2>/dev/null", _list),
            F.Probe("hostname", "hostname", lambda raw: raw.out.strip().lower())]


def _list(raw: F.Raw) -> list[Any] | None:
    if not raw.ok:
        return None
    start = raw.out.find("[")
    try:
        return json.loads(raw.out[start:]) if start >= 0 else []
    except ValueError:
        return None


def release_info(releases: Any, name: str) -> dict[str, str] | None:
    """{"chart", "chart_version", "app_version"} of the release in `helm3 list -o json`."""
    rel = next((r for r in releases or [] if isinstance(r, dict) and r.get("name") == name), None)
    if rel is None:
        return None
    chart, _, version = str(rel.get("chart", "")).rpartition("-")
    return {"chart": chart, "chart_version": version, "app_version": str(rel.get("app_version", "")),
            "status": str(rel.get("status", ""))}


def running_hub_pod(pods: Mapping[str, Any] | None) -> str | None:
    """The hub pod that runs (the one `kubectl exec` can enter)."""
    for p in (pods or {}).get("items") or []:
        if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
            return str(p["metadata"]["name"])
    return None


STUCK = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


def pod_stuck(pod: Mapping[str, Any]) -> bool:
    """A pod that will not become ready by waiting: a container waiting for one of STUCK, or the pod ended."""
    st = pod.get("status") or {}
    if st.get("phase") in ("Failed", "Succeeded"):
        return True
    return any(((cs.get("state") or {}).get("waiting") or {}).get("reason") in STUCK
               for cs in st.get("containerStatuses") or [])


def db_kind(url: str) -> str:
    """sqlite (z2jh's PVC), postgres or mysql, from HUB_DB_URL; anything else is refused by the caller."""
    if not url:
        return "sqlite"
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql"}.get(scheme, scheme)


# The user folders --homes copies, and their sizes: run as root on the control node. argv[1] = JSON
# {"areas": {"home": {dir: path}, "student-work": {dir: path}}}. Prints {"areas": {area: {dir: {"path", "size",
# "files"}}}}, sizes in bytes of regular files (symlinks not followed), so the admin sees them before anything
# is copied.
SIZES_PY = r"""
import json, os, sys
a = json.loads(sys.argv[1])
out = {}
for area, dirs in a["areas"].items():
    for name, path in sorted(dirs.items()):
        size = files = 0
        if not os.path.isdir(path):
            continue
        for root, subdirs, names in os.walk(path):
            for n in names:
                try:
                    st = os.lstat(os.path.join(root, n))
                except OSError:
                    continue
                size += st.st_size
                files += 1
        out.setdefault(area, {})[name] = {"path": path, "size": size, "files": files}
print(json.dumps({"areas": out}))
"""

# Lists the user folders under the given parents: argv[1] = JSON {"home": parent|"", "student-work": parent|""}.
LIST_PY = r"""
import json, os, sys
a = json.loads(sys.argv[1])
out = {}
for area, parent in a.items():
    if parent and os.path.isdir(parent):
        out[area] = {n: os.path.join(parent, n) for n in sorted(os.listdir(parent))
                     if os.path.isdir(os.path.join(parent, n)) and not os.path.islink(os.path.join(parent, n))}
print(json.dumps(out))
"""


def home_parents(settings: Any) -> dict[str, str]:
    """Where user folders live as node paths: shared storage (hostPath type) home/, and student work."""
    out = {"home": "", "student-work": settings.workshop_student_work_path or ""}
    if settings.shared_storage_enabled and settings.shared_storage_type == "hostpath":
        out["home"] = str(Path(settings.shared_storage_path) / "home")
    return out


def storage_kind(settings: Any) -> str:
    if settings.shared_storage_enabled:
        return "nfs" if settings.shared_storage_type == "nfs" else "shared"
    return "hostpath-storage"


def claim_homes(pvs: Mapping[str, Any] | None, settings: Any) -> dict[str, str]:
    """hostpath-storage homes: {dir: node path} of every claim-<dir> volume of the hub namespace that is bound
    to a PV with a node path (stages/_data.py's data_locations, kind "home")."""
    from stages._data import USER_CLAIM_PREFIX, data_locations

    out = {}
    for loc in data_locations({"pv": pvs}, settings, ""):
        claim = loc.claim.partition("/")[2]
        if loc.kind == "home" and loc.pv and claim.startswith(USER_CLAIM_PREFIX) and loc.path.startswith("/"):
            out[claim[len(USER_CLAIM_PREFIX):]] = loc.path
    return out


def homes_refusal(settings: Any) -> str:
    """Why --homes cannot copy the homes from the control node ("" when it can)."""
    if settings.shared_storage_enabled and settings.shared_storage_type == "nfs":
        return (f"user homes are on NFS ({settings.nfs_server}:{settings.shared_storage_path}), which this node does "
                "not have mounted; back them up on the NFS server (or run without --homes)")
    if settings.workshop_student_work_path and settings.shared_storage_type == "nfs" and settings.nfs_server:
        return "student work is on NFS; back it up on the NFS server (or run without --homes)"
    return ""


# ---------------------------------------------------------------------------------------------
# Code that runs inside the hub pod (its python3, via `kubectl exec`)

# argv[1] = the database path. stdout: one JSON line (meta), then the copy in base64. The copy is taken with
# sqlite's online backup API, so it is consistent while the hub keeps writing; checked with integrity_check.
HUB_BACKUP_PY = r"""# provision backup: hub database (sqlite online backup)
import base64, hashlib, json, os, sqlite3, sys, tempfile, urllib.parse
path = sys.argv[1]
fd, tmp = tempfile.mkstemp(prefix="provision-backup-", suffix=".sqlite")
os.close(fd)
try:
    src = sqlite3.connect("file:" + urllib.parse.quote(path) + "?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(tmp)
    src.backup(dst)
    src.close()
    def rows(sql):
        try:
            return dst.execute(sql).fetchall()
        except sqlite3.Error:
            return []
    check = rows("PRAGMA integrity_check")
    rev = rows("SELECT version_num FROM alembic_version")
    users = [r[0] for r in rows("SELECT name FROM users ORDER BY name")]
    approved = [r[0] for r in rows("SELECT username FROM users_info WHERE is_authorized ORDER BY username")]
    dst.close()
    with open(tmp, "rb") as f:
        data = f.read()
finally:
    os.unlink(tmp)
try:
    import jupyterhub
    version = jupyterhub.__version__
except ImportError:
    version = ""
meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "integrity": check[0][0] if check else "",
        "schema_revision": rev[0][0] if rev else "", "jupyterhub_version": version, "users": users,
        "approved": approved}
sys.stdout.write(json.dumps(meta) + "\n")
sys.stdout.write(base64.encodebytes(data).decode())
"""

# argv[1] = the database path ("" for an external database). One JSON line: the installed JupyterHub's version,
# the schema revisions it knows (alembic), and the users in its database now.
HUB_INFO_PY = r"""# provision restore: what the installed hub knows
import json, os, sqlite3, sys, urllib.parse
out = {"jupyterhub_version": "", "revisions": [], "users": [], "approved": []}
try:
    import jupyterhub
    from alembic.script import ScriptDirectory
    out["jupyterhub_version"] = jupyterhub.__version__
    d = ScriptDirectory(os.path.join(os.path.dirname(jupyterhub.__file__), "alembic"))
    out["revisions"] = [r.revision for r in d.walk_revisions()]
except Exception as e:
    out["error"] = type(e).__name__ + ": " + str(e)[:200]
path = sys.argv[1]
if path and os.path.exists(path):
    con = sqlite3.connect("file:" + urllib.parse.quote(path) + "?mode=ro", uri=True, timeout=60)
    for key, sql in (("users", "SELECT name FROM users ORDER BY name"),
                     ("approved", "SELECT username FROM users_info WHERE is_authorized ORDER BY username")):
        try:
            out[key] = [r[0] for r in con.execute(sql)]
        except sqlite3.Error:
            pass
    con.close()
print(json.dumps(out))
"""

# In the short-lived restore pod: argv[1] = the database path, argv[2] = the expected sha256; stdin = the
# database. Written beside the target, checked (sha256, integrity_check), then renamed over it, so a failure
# leaves the old database as it was; sqlite's journal files of the old one are removed.
DB_RESTORE_PY = r"""# provision restore: hub database into its volume
import hashlib, json, os, sqlite3, sys
path, want = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read()
if hashlib.sha256(data).hexdigest() != want:
    print(json.dumps({"error": "the database arrived damaged (sha256 differs)"}))
    sys.exit(3)
d = os.path.dirname(path)
tmp = os.path.join(d, ".provision-restore.sqlite")
with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
con = sqlite3.connect(tmp)
check = con.execute("PRAGMA integrity_check").fetchone()[0]
con.close()
if check != "ok":
    os.unlink(tmp)
    print(json.dumps({"error": "integrity_check: " + str(check)[:200]}))
    sys.exit(4)
st = os.stat(d)
if os.getuid() == 0:
    os.chown(tmp, st.st_uid, st.st_gid)
for suffix in ("-journal", "-wal", "-shm"):
    if os.path.exists(path + suffix):
        os.unlink(path + suffix)
os.replace(tmp, path)
fd = os.open(d, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(json.dumps({"ok": True, "size": len(data)}))
"""


def parse_backup_output(text: str) -> tuple[dict[str, Any], bytes]:
    """HUB_BACKUP_PY's output → (meta, database bytes), checked against the meta's size and sha256."""
    import base64
    import binascii

    head, _, body = text.partition("\n")
    try:
        meta = json.loads(head)
        data = base64.decodebytes(body.encode())
    except (ValueError, binascii.Error) as e:
        raise BackupError(f"the hub's database copy could not be read ({type(e).__name__})",
                          "re-run; if it repeats, check `microk8s kubectl logs deploy/hub` for a problem") from None
    if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise BackupError("the hub's database copy arrived damaged (size or sha256 differs)", "re-run the backup")
    if meta.get("integrity") != "ok":
        raise BackupError(f"the hub's database fails sqlite's integrity_check ({str(meta.get('integrity'))[:100]})",
                          "the database itself is damaged: keep the hub running and ask for help before restoring "
                          "anything; an older backup may be intact")
    return meta, data


def compat_problem(backup: Mapping[str, Any], installed: Mapping[str, Any]) -> str:
    """Why the backup's database cannot go into the installed hub ("" when it can). A schema revision the
    installed JupyterHub does not know was written by a newer JupyterHub: the hub cannot downgrade its schema.
    An older revision is fine: z2jh starts a sqlite hub with --upgrade-db (it keeps a copy of the old file)."""
    rev = str(backup.get("schema_revision") or "")
    known = installed.get("revisions") or []
    if not rev or not known:
        return ""
    if rev not in known:
        return (f"the backup's database comes from JupyterHub {backup.get('jupyterhub_version') or '?'} (schema "
                f"{rev}), newer than the installed JupyterHub {installed.get('jupyterhub_version') or '?'}, which "
                "cannot downgrade it")
    return ""


def restore_pod(deployment: Mapping[str, Any], name: str = RESTORE_POD) -> tuple[dict[str, Any], str]:
    """A short-lived pod that mounts the hub's database volume where the hub does, with the hub's own image,
    user and placement (so it works whatever storage backs the PVC), and sleeps until provision has put the
    database in and deletes it. Returns (pod, the database path inside it)."""
    from stages._data import HUB_DB_CLAIM

    spec = deployment["spec"]["template"]["spec"]
    hub = next(c for c in spec["containers"] if c["name"] == "hub")
    vol = next((v for v in spec.get("volumes") or []
                if (v.get("persistentVolumeClaim") or {}).get("claimName") == HUB_DB_CLAIM), None)
    if vol is None:
        raise BackupError(f"the hub deployment mounts no {HUB_DB_CLAIM} volume: it does not keep sqlite on a PVC",
                          "check HUB_DB_URL in the settings: the backup holds a sqlite database", exit_code=EXIT_REFUSED)
    mount = next(m for m in hub.get("volumeMounts") or [] if m["name"] == vol["name"])
    container = {"name": "restore", "image": hub["image"], "imagePullPolicy": hub.get("imagePullPolicy", "IfNotPresent"),
                 "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "hub-db", "mountPath": mount["mountPath"]}]}
    if hub.get("securityContext"):
        container["securityContext"] = hub["securityContext"]
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                                "terminationGracePeriodSeconds": 0, "containers": [container],
                                "volumes": [{"name": "hub-db", "persistentVolumeClaim": {"claimName": HUB_DB_CLAIM}}]}
    for key in ("nodeSelector", "tolerations", "affinity", "securityContext", "imagePullSecrets"):
        if spec.get(key):
            pod_spec[key] = spec[key]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"],
                        "labels": {"app.kubernetes.io/managed-by": "provision", "provision.io/restore": "hub-db"}},
           "spec": pod_spec}
    return pod, mount["mountPath"].rstrip("/") + "/" + DB_FILE


# ---------------------------------------------------------------------------------------------
# External databases: the client tool on the control node, the password in a 0600 file, never in argv


@dataclass(frozen=True)
class ExternalDb:
    kind: str  # postgres | mysql
    host: str
    port: int | None
    user: str
    password: str
    database: str

    @property
    def tools(self) -> tuple[str, str]:
        """(dump tool, restore tool)."""
        return ("pg_dump", "pg_restore") if self.kind == "postgres" else ("mysqldump", "mysql")

    @property
    def member(self) -> str:
        return "hub/database.dump" if self.kind == "postgres" else "hub/database.sql"

    def credentials(self) -> str:
        """The 0600 file's text: a pgpass line (PGPASSFILE) or a [client] option file (--defaults-extra-file)."""
        if self.kind == "postgres":
            def esc(v: str) -> str:
                return v.replace("\\", "\\\\").replace(":", "\\:")
            return f"{esc(self.host)}:{self.port or 5432}:{esc(self.database)}:{esc(self.user)}:{esc(self.password)}\n"

        def q(v: str) -> str:
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return (f"[client]\nuser={q(self.user)}\npassword={q(self.password)}\nhost={q(self.host)}\n"
                + (f"port={self.port}\n" if self.port else ""))

    def dump_argv(self, secret_file: str, out: str) -> list[str]:
        if self.kind == "postgres":
            return ["env", f"PGPASSFILE={secret_file}", "pg_dump", "--host", self.host, "--port",
                    str(self.port or 5432), "--username", self.user, "--no-password", "--format=custom",
                    "--no-owner", "--file", out, "--dbname", self.database]
        return ["mysqldump", f"--defaults-extra-file={secret_file}", "--single-transaction", "--routines",
                f"--result-file={out}", "--databases", self.database]

    def restore_argv(self, secret_file: str, dump: str) -> list[str]:
        """Replaces the hub's tables with the dump's (pg_restore --clean; mysqldump's DROP TABLE statements)."""
        if self.kind == "postgres":
            return ["env", f"PGPASSFILE={secret_file}", "pg_restore", "--host", self.host, "--port",
                    str(self.port or 5432), "--username", self.user, "--no-password", "--clean", "--if-exists",
                    "--no-owner", "--dbname", self.database, dump]
        return ["sh", "-c", 'exec mysql --defaults-extra-file="$1" "$2" < "$3"', "sh", secret_file,
                self.database, dump]


def external_db(url: str) -> ExternalDb:
    kind = db_kind(url)
    if kind not in ("postgres", "mysql"):
        raise BackupError(f"HUB_DB_URL uses {kind}:, which backup cannot dump",
                          "back the database up with its own tools; provision handles sqlite, postgresql and mysql",
                          exit_code=EXIT_CONFIG)
    u = urlparse(url)
    return ExternalDb(kind, u.hostname or "localhost", u.port, unquote(u.username or ""),
                      unquote(u.password or ""), (u.path or "/").lstrip("/").split("?")[0])


# ---------------------------------------------------------------------------------------------
# The usage portal's records (ENABLE_USAGE_PORTAL): its SQLite file on the control node, or its PostgreSQL
# database (USAGE_DB_URL) dumped and restored like the hub's external one


@dataclass(frozen=True)
class UsageDb:
    """Where the usage portal keeps its records under the given settings."""

    kind: str  # sqlite | postgres
    path: str = ""  # sqlite: the file on the control node
    ext: ExternalDb | None = None  # postgres: the database, dumped with pg_dump as the hub's external one

    @property
    def member(self) -> str:
        return USAGE_SQLITE if self.kind == "sqlite" else USAGE_DUMP

    def describe(self) -> str:
        if self.ext:
            return f"PostgreSQL {self.ext.database} on {self.ext.host}"
        return self.path


def usage_db(settings: Any) -> UsageDb | None:
    """The usage portal's database (None when ENABLE_USAGE_PORTAL=false): USAGE_DB_URL, else the portal's
    default SQLite file (store.DEFAULT_DB_PATH, /var/lib/provision/usage.db)."""
    from provision.jupyterhub.portal.store import DEFAULT_DB_PATH, sqlite_path

    if not settings.enable_usage_portal:
        return None
    url = settings.usage_db_url.reveal()
    if not url:
        return UsageDb("sqlite", DEFAULT_DB_PATH)
    path = sqlite_path(url)
    if path is not None:
        if not path.startswith("/"):
            raise BackupError("USAGE_DB_URL names a relative SQLite path, which backup cannot find on the control "
                              "node", "use an absolute one (sqlite:////var/lib/provision/usage.db)",
                              exit_code=EXIT_CONFIG)
        return UsageDb("sqlite", path)
    if db_kind(url) == "postgres":
        return UsageDb("postgres", ext=external_db(url))
    raise BackupError(f"USAGE_DB_URL uses {db_kind(url)}:, which backup cannot copy",
                      "the usage portal keeps its records in SQLite or PostgreSQL", exit_code=EXIT_CONFIG)


def usage_member(man: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The archive's usage portal member (its manifest row), None in an archive without one."""
    return next((m for m in man.get("members") or [] if str(m.get("name", "")).startswith("usage/")), None)


def usage_restore_target(man: Mapping[str, Any], settings: Any, skip: bool) -> UsageDb | None:
    """Where restore puts the archive's usage records (None: nothing to do). Refused (exit 6) before anything is
    touched when the settings have no portal or keep its records in another kind of database."""
    from provision.errors import EXIT_REFUSED

    row = usage_member(man)
    if row is None or skip:
        return None
    target = usage_db(settings)
    if target is None:
        raise BackupError(f"the backup holds the usage portal's records ({row['name']}) but the settings have "
                          "ENABLE_USAGE_PORTAL=false: nothing was changed",
                          "set ENABLE_USAGE_PORTAL=true in jhub.env and run `sudo provision install`, then restore; "
                          "or restore without them: add --skip-usage", exit_code=EXIT_REFUSED)
    if target.member != row["name"]:
        have = "SQLite" if row["name"] == USAGE_SQLITE else "PostgreSQL"
        now = "SQLite" if target.kind == "sqlite" else "PostgreSQL"
        raise BackupError(f"the backup holds a {have} usage portal database but USAGE_DB_URL uses {now}: nothing "
                          "was changed", "restore with the USAGE_DB_URL the backup was taken with (settings/jhub.env "
                          "in the archive), or add --skip-usage", exit_code=EXIT_REFUSED)
    return target


# On the control node as root: argv[1] = the portal's database, argv[2] = the copy to write (0600). Prints one
# JSON line: {"missing": true} when there is no database yet, else what the copy holds, its size and sha256. The
# copy is taken with sqlite's online backup API (consistent while the portal's collector writes), made a
# single file (rollback journal, not WAL) and checked with integrity_check; mode=rw never creates a database.
USAGE_BACKUP_PY = r"""# provision backup: usage portal database (sqlite online backup)
import hashlib, json, os, sqlite3, sys, urllib.parse
os.umask(0o077)
path, out = sys.argv[1], sys.argv[2]
if not os.path.isfile(path):
    print(json.dumps({"missing": True}))
    sys.exit(0)
os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
src = sqlite3.connect("file:" + urllib.parse.quote(path) + "?mode=rw", uri=True, timeout=60)
dst = sqlite3.connect(out)
src.backup(dst)
src.close()
dst.execute("PRAGMA journal_mode=DELETE")
def one(sql):
    try:
        return dst.execute(sql).fetchone()[0]
    except (sqlite3.Error, TypeError):
        return None
meta = {"integrity": one("PRAGMA integrity_check") or "", "schema_version": one("SELECT max(version) FROM schema_version"),
        "sessions": one("SELECT count(*) FROM sessions"),
        "running": one("SELECT count(*) FROM sessions WHERE end_time IS NULL"),
        "quotas": one("SELECT count(*) FROM quotas"),
        "groups": one("SELECT count(DISTINCT group_name) FROM group_members")}
dst.close()
h = hashlib.sha256()
with open(out, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
meta.update(size=os.path.getsize(out), sha256=h.hexdigest())
print(json.dumps(meta))
"""

# On the control node as root, the portal stopped: argv[1] = the portal's database, argv[2] = the expected
# sha256, argv[3] = the copy from the archive. Written beside the target (0600 root; a missing folder is made
# 0700), fsynced, checked (sha256, integrity_check), then renamed over it, so a failure leaves the old database
# as it was; the old database's journal files are removed.
USAGE_RESTORE_PY = r"""# provision restore: usage portal database
import hashlib, json, os, sqlite3, sys
os.umask(0o077)
path, want, src = sys.argv[1], sys.argv[2], sys.argv[3]
h = hashlib.sha256()
with open(src, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want:
    print(json.dumps({"error": "the usage database arrived damaged (sha256 differs)"}))
    sys.exit(3)
d = os.path.dirname(path) or "."
if not os.path.isdir(d):
    os.makedirs(d, 0o700)
    os.chmod(d, 0o700)
tmp = os.path.join(d, "." + os.path.basename(path) + ".provision-restore")
for f in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
    if os.path.lexists(f):
        os.unlink(f)
size = 0
with open(src, "rb") as f, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        out.write(chunk)
        size += len(chunk)
    out.flush()
    os.fsync(out.fileno())
os.chmod(tmp, 0o600)
if os.getuid() == 0:
    os.chown(tmp, 0, 0)
con = sqlite3.connect(tmp)
check = con.execute("PRAGMA integrity_check").fetchone()[0]
con.close()
if check != "ok":
    os.unlink(tmp)
    print(json.dumps({"error": "integrity_check: " + str(check)[:200]}))
    sys.exit(4)
for suffix in ("-journal", "-wal", "-shm"):
    if os.path.lexists(path + suffix):
        os.unlink(path + suffix)
os.replace(tmp, path)
fd = os.open(d, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(json.dumps({"ok": True, "size": size}))
"""


def parse_usage_meta(text: str) -> dict[str, Any]:
    """USAGE_BACKUP_PY's JSON line, refused when the copy fails integrity_check."""
    try:
        meta = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BackupError("the usage portal's database copy could not be read",
                          "re-run; if it repeats, check python3 and sudo on the control node") from None
    if not meta.get("missing") and meta.get("integrity") != "ok":
        raise BackupError(f"the usage portal's database fails sqlite's integrity_check "
                          f"({str(meta.get('integrity'))[:100]})",
                          "the database itself is damaged; an older backup may be intact")
    return dict(meta)


def human(n: int | None) -> str:
    from stages._microk8s import human as h

    return "?" if n is None else h(int(n))

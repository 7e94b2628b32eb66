"""Where user data lives, and where `provision uninstall` keeps it. Shared by uninstall, backup and diag.

`data_locations(facts, settings, node)` → [DataLocation(kind, node, path, size, pv, claim)], from one fact
(`probe(settings)`, gathered on the control node as root): the hub namespace's claims and their PVs, and the
size (`du -sb`, bytes) of every path. Kinds:

- hub-db        the hub's sqlite volume (claim hub-db-dir); absent with an external HUB_DB_URL
- home          one user's volume (claim claim-<user>), hostpath-storage on a single node
- shared        the shared homes PV/PVC jhub-homes (SHARED_STORAGE_PATH: NFS or a hostPath on every node)
- workshop      WORKSHOP_{LESSONS,DATASETS,MODELS}_PATH (read-only content)
- student-work  WORKSHOP_STUDENT_WORK_PATH

`node` is the node whose disk holds the bytes ("" = shared storage, the same on every node; hostpath-storage
volumes are on the control node: provision enables that addon only on a single node).

hostpath-storage keeps its volumes under HOSTPATH_DIR, inside the snap's tree: removing the snap deletes them.
So uninstall moves each one (same filesystem: a rename, bytes untouched) to KEPT_DIR/<pv dir> and records it
in KEPT_RECORD; a re-install turns every record into a static PV bound to the same claim (`kept_pvs`), so the
hub finds its database and every user their home. After an uninstall, data_locations lists those kept
directories (claim from the record, pv "").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from stages import _microk8s as M

HOSTPATH_DIR = "/var/snap/microk8s/common/default-storage"  # the hostpath provisioner's PV_DIR (microk8s.md)
KEPT_DIR = "/var/lib/provision/kept"  # outside the snap's tree, on the same filesystem as /var/snap
KEPT_RECORD = f"{KEPT_DIR}/kept.json"  # [{"dir", "namespace", "claim", "storage_class", "capacity", "access_modes"}]
HUB_DB_CLAIM = "hub-db-dir"  # z2jh hub.db.pvc: the hub's sqlite volume
USER_CLAIM_PREFIX = "claim-"  # z2jh singleuser.storage dynamic: claim-{username}
KINDS = ("hub-db", "home", "shared", "workshop", "student-work")


@dataclass(frozen=True)
class DataLocation:
    """One place user data lives. size: bytes (None when it could not be measured)."""

    kind: str
    node: str
    path: str
    size: int | None
    pv: str = ""
    claim: str = ""  # namespace/claim

    def describe(self) -> str:
        from stages._microk8s import human

        where = f"on {self.node}" if self.node else "on shared storage"
        size = human(self.size) if self.size is not None else "size unknown"
        owner = f" (claim {self.claim}" + (f", PV {self.pv})" if self.pv else ")") if self.claim else ""
        return f"{self.kind}: {self.path} {where}, {size}{owner}"


# Run as root on the control node: argv[1] = JSON {"ns", "paths": [...], "kept": KEPT_RECORD, "hostpath": dir}.
# Prints {"pv": kubectl JSON | null, "pvc": ... | null, "kept": [...], "sizes": {path: bytes},
# "hostpath_dirs": [names in HOSTPATH_DIR]} (sizes also of every directory in HOSTPATH_DIR).
DATA_PY = r"""
import json, os, subprocess, sys
a = json.loads(sys.argv[1])
def kube(*args):
    try:
        r = subprocess.run(["microk8s", "kubectl", "get", *args, "-o", "json"], capture_output=True, text=True,
                           timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
pv, pvc = kube("pv"), kube("pvc", "-n", a["ns"])
try:
    with open(a["kept"]) as f:
        kept = json.load(f)
except (OSError, ValueError):
    kept = []
paths = set(a["paths"]) | {r.get("dir", "") for r in kept}
try:
    hostpath_dirs = sorted(os.listdir(a["hostpath"]))
except OSError:
    hostpath_dirs = []
paths |= {os.path.join(a["hostpath"], d) for d in hostpath_dirs}
for v in (pv or {}).get("items") or []:
    paths.add(((v.get("spec") or {}).get("hostPath") or {}).get("path", ""))
sizes = {}
for p in sorted(x for x in paths if x):
    if not os.path.isdir(p):
        continue
    try:
        r = subprocess.run(["du", "-sb", "--", p], capture_output=True, text=True, timeout=120)
        sizes[p] = int(r.stdout.split()[0]) if r.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        sizes[p] = None
print(json.dumps({"pv": pv, "pvc": pvc, "kept": kept, "sizes": sizes, "hostpath_dirs": hostpath_dirs}))
"""


def workshop_paths(settings: Any) -> list[tuple[str, str]]:
    """(kind, path) for each workshop path set in jhub.env."""
    out = [("workshop", p) for p in (settings.workshop_lessons_path, settings.workshop_datasets_path,
                                     settings.workshop_models_path) if p]
    if settings.workshop_student_work_path:
        out.append(("student-work", settings.workshop_student_work_path))
    return out


def host_paths(settings: Any) -> list[str]:
    """Paths on the control node to measure besides the PVs': shared storage (hostPath type) and workshop."""
    out = [p for _, p in workshop_paths(settings)]
    if settings.shared_storage_enabled and settings.shared_storage_type == "hostpath" and settings.shared_storage_path:
        out.append(settings.shared_storage_path)
    return out


parse_data = M.parse_kube_json  # the script prints one JSON object, as kubectl does


def probe(settings: Any, name: str = "data") -> F.Probe:
    """The one fact data_locations reads (run on the control node, as root: du must read every home)."""
    arg = json.dumps({"ns": settings.hub_namespace, "paths": host_paths(settings), "kept": KEPT_RECORD,
                      "hostpath": HOSTPATH_DIR})
    return F.Probe(name, "command -v python3 >/dev/null 2>&1 || exit 127\n"
                   + F.quoted("timeout 900 python3 -c {py} {arg}", py=DATA_PY, arg=arg), parse_data)


def claim_kind(claim: str) -> str | None:
    from provision.jupyterhub import HOMES_PVC

    if claim == HUB_DB_CLAIM:
        return "hub-db"
    if claim == HOMES_PVC:
        return "shared"
    if claim.startswith(USER_CLAIM_PREFIX):
        return "home"
    return None


def _pv_path(spec: Mapping[str, Any]) -> str:
    if spec.get("hostPath"):
        return str(spec["hostPath"].get("path", ""))
    if spec.get("nfs"):
        return f"{spec['nfs'].get('server', '')}:{spec['nfs'].get('path', '')}"
    return ""


def data_locations(facts: Mapping[str, Any] | None, settings: Any, node: str) -> list[DataLocation]:
    """Every place user data lives, from probe()'s fact; `node` = the control node (where it was gathered).
    Ordered hub-db, home, shared, workshop, student-work; paths unique."""
    facts = facts or {}
    ns = settings.hub_namespace
    sizes: Mapping[str, int | None] = facts.get("sizes") or {}
    out: list[DataLocation] = []
    seen: set[str] = set()

    def add(kind: str, where: str, path: str, pv: str = "", claim: str = "") -> None:
        if path and path not in seen:
            seen.add(path)
            out.append(DataLocation(kind, where, path, sizes.get(path), pv, claim))

    for pv in (facts.get("pv") or {}).get("items") or []:
        spec = pv.get("spec") or {}
        ref = spec.get("claimRef") or {}
        kind = claim_kind(str(ref.get("name", ""))) if ref.get("namespace") == ns else None
        if kind is None:
            continue
        shared = kind == "shared" or bool(spec.get("nfs"))
        add(kind, "" if shared else node, _pv_path(spec), pv["metadata"]["name"], f"{ns}/{ref['name']}")
    for rec in facts.get("kept") or []:
        kind = claim_kind(str(rec.get("claim", "")))
        if kind:
            add(kind, node, str(rec.get("dir", "")), "", f"{rec.get('namespace', ns)}/{rec['claim']}")
    if settings.shared_storage_enabled:
        path = (f"{settings.nfs_server}:{settings.shared_storage_path}" if settings.shared_storage_type == "nfs"
                else settings.shared_storage_path)
        add("shared", "", path)
    for kind, path in workshop_paths(settings):
        add(kind, "", path)
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(out, key=lambda d: order[d.kind])


# ---------------------------------------------------------------------------------------------
# Kept volumes: the record uninstall writes, and the static PVs a re-install makes from it.


def kept_record(pv: Mapping[str, Any], kept_dir: str) -> dict[str, Any]:
    """The record of one hostpath-storage PV whose directory uninstall moves to `kept_dir`."""
    spec = pv.get("spec") or {}
    ref = spec.get("claimRef") or {}
    return {"dir": kept_dir, "namespace": ref.get("namespace", ""), "claim": ref.get("name", ""),
            "storage_class": spec.get("storageClassName") or "",
            "capacity": (spec.get("capacity") or {}).get("storage", "1Gi"),
            "access_modes": list(spec.get("accessModes") or ["ReadWriteOnce"]), "pv": pv["metadata"]["name"]}


def orphan_record(kept_dir: str) -> dict[str, Any]:
    """A hostpath-storage directory no PV names any more (a claim deleted earlier, reclaim policy Retain)."""
    return {"dir": kept_dir, "namespace": "", "claim": "", "storage_class": "", "capacity": "",
            "access_modes": [], "pv": ""}


def kept_pv_name(rec: Mapping[str, Any]) -> str:
    """A PV name from the record: stable, so re-applying changes nothing (≤ 253 chars, DNS subdomain)."""
    import hashlib

    digest = hashlib.sha256(f"{rec['namespace']}/{rec['claim']}".encode()).hexdigest()[:10]
    return f"provision-kept-{digest}"


def kept_pvs(records: Sequence[Mapping[str, Any]], ns: str) -> list[dict[str, Any]]:
    """Static PVs (Retain, hostPath = the kept directory, claimRef = the old claim) for the records of `ns`:
    when the hub's hub-db-dir and the users' claim-<user> PVCs are created again they bind to these, so the
    hub finds its database and every user their files. The claimRef has no uid: any claim of that name binds."""
    out = []
    for rec in records:
        if rec.get("namespace") != ns or not rec.get("claim") or not rec.get("dir"):
            continue
        out.append({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": kept_pv_name(rec),
                                 "labels": {"app.kubernetes.io/managed-by": "provision",
                                            "provision.io/kept": "true"}},
                    "spec": {"capacity": {"storage": rec.get("capacity") or "1Gi"},
                             "accessModes": list(rec.get("access_modes") or ["ReadWriteOnce"]),
                             "persistentVolumeReclaimPolicy": "Retain",
                             "storageClassName": rec.get("storage_class") or "",
                             "volumeMode": "Filesystem",
                             "hostPath": {"path": rec["dir"], "type": "Directory"},
                             "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns,
                                          "name": rec["claim"]}}})
    return out


def parse_kept(raw: F.Raw) -> dict[str, Any]:
    """Stage 70's probe: the kept record, `---`, then `kubectl get pv -o json` ({} when there is no record)."""
    import contextlib

    if not raw.out.strip():
        return {}
    record, _, pvs = raw.out.partition("\n---\n")
    out: dict[str, Any] = {"records": [], "pvs": None}
    with contextlib.suppress(ValueError):
        out["records"] = json.loads(record) or []
    with contextlib.suppress(ValueError):
        out["pvs"] = json.loads(pvs) if raw.ok and pvs.strip() else None
    return out


def missing_kept_pvs(kept: Mapping[str, Any] | None, ns: str) -> list[dict[str, Any]]:
    """The static PVs for kept volumes that the cluster does not have yet (stage 70 applies them)."""
    if not kept or kept.get("pvs") is None:  # no record, or the API did not answer (stage 70 fails on it)
        return []
    have = {(p.get("metadata") or {}).get("name") for p in kept["pvs"].get("items") or []}
    return [pv for pv in kept_pvs(kept["records"], ns) if pv["metadata"]["name"] not in have]

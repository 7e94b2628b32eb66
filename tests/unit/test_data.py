"""Where user data lives (stages/_data.py): data_locations from the gathered fact, the kept record, the static
PVs a re-install makes from it, and the fact script itself run against a temp tree."""

from __future__ import annotations

import json
import subprocess
import sys

from provision import facts as F
from provision.config import Settings
from stages import _data as D


def pv(name: str, claim: str, spec: dict, ns: str = "jhub") -> dict:
    return {"metadata": {"name": name}, "spec": {"claimRef": {"namespace": ns, "name": claim}, **spec}}


def test_locations_by_kind_node_path_size_and_claim():
    s = Settings(shared_storage_enabled=True, shared_storage_type="nfs", nfs_server="nas", shared_storage_path="/x",
                 workshop_models_path="/m", workshop_student_work_path="/w")
    facts = {"pv": {"items": [
        pv("pvc-db", "hub-db-dir", {"hostPath": {"path": f"{D.HOSTPATH_DIR}/db"}}),
        pv("pvc-a", "claim-alice", {"hostPath": {"path": f"{D.HOSTPATH_DIR}/a"}}),
        pv("jhub-homes", "jhub-homes", {"nfs": {"server": "nas", "path": "/x"}}),
        pv("other", "data", {"hostPath": {"path": "/srv/other"}}, ns="lab"),   # not the hub's
    ]}, "kept": [{"dir": f"{D.KEPT_DIR}/old", "namespace": "jhub", "claim": "claim-bob"}],
        "sizes": {f"{D.HOSTPATH_DIR}/db": 4096, f"{D.KEPT_DIR}/old": 10}}
    locs = D.data_locations(facts, s, "node1")
    assert [(d.kind, d.node, d.path, d.size, d.pv, d.claim) for d in locs] == [
        ("hub-db", "node1", f"{D.HOSTPATH_DIR}/db", 4096, "pvc-db", "jhub/hub-db-dir"),
        ("home", "node1", f"{D.HOSTPATH_DIR}/a", None, "pvc-a", "jhub/claim-alice"),
        ("home", "node1", f"{D.KEPT_DIR}/old", 10, "", "jhub/claim-bob"),
        ("shared", "", "nas:/x", None, "jhub-homes", "jhub/jhub-homes"),
        ("workshop", "", "/m", None, "", ""),
        ("student-work", "", "/w", None, "", ""),
    ]
    assert locs[0].describe() == (f"hub-db: {D.HOSTPATH_DIR}/db on node1, 4.0 KiB (claim jhub/hub-db-dir, PV pvc-db)")
    assert D.data_locations(None, Settings(), "n") == []


def test_kept_record_becomes_a_static_pv_bound_to_the_old_claim():
    old = pv("pvc-db", "hub-db-dir", {"hostPath": {"path": f"{D.HOSTPATH_DIR}/db"}, "storageClassName":
                                      "microk8s-hostpath", "capacity": {"storage": "1Gi"},
                                      "accessModes": ["ReadWriteOnce"]})
    rec = D.kept_record(old, f"{D.KEPT_DIR}/db")
    (new,) = D.kept_pvs([rec, {"dir": "/y", "namespace": "", "claim": ""},
                         {**rec, "namespace": "other"}], "jhub")
    spec = new["spec"]
    assert spec["hostPath"] == {"path": f"{D.KEPT_DIR}/db", "type": "Directory"}
    assert spec["claimRef"] == {"kind": "PersistentVolumeClaim", "namespace": "jhub", "name": "hub-db-dir"}
    assert spec["persistentVolumeReclaimPolicy"] == "Retain" and spec["storageClassName"] == "microk8s-hostpath"
    assert new["metadata"]["name"] == D.kept_pv_name(rec) == D.kept_pvs([rec], "jhub")[0]["metadata"]["name"]


def test_stage70_fact_applies_only_missing_kept_pvs():
    rec = {"dir": "/k/db", "namespace": "jhub", "claim": "hub-db-dir", "storage_class": "microk8s-hostpath",
           "capacity": "1Gi", "access_modes": ["ReadWriteOnce"]}
    name = D.kept_pv_name(rec)
    raw = F.Raw(json.dumps([rec]) + "\n---\n" + json.dumps({"items": []}), 0)
    assert [p["metadata"]["name"] for p in D.missing_kept_pvs(D.parse_kept(raw), "jhub")] == [name]
    have = F.Raw(json.dumps([rec]) + "\n---\n" + json.dumps({"items": [{"metadata": {"name": name}}]}), 0)
    assert D.missing_kept_pvs(D.parse_kept(have), "jhub") == []
    assert D.missing_kept_pvs(D.parse_kept(F.Raw("", 0)), "jhub") == []          # no record: nothing
    assert D.missing_kept_pvs(D.parse_kept(F.Raw(json.dumps([rec]) + "\n---\n", 1)), "jhub") == []  # API down


def test_fact_script_measures_pv_dirs_workshop_and_kept(tmp_path):
    hp, kept = tmp_path / "hp", tmp_path / "kept"
    (hp / "vol1").mkdir(parents=True)
    (hp / "vol1" / "f").write_bytes(b"x" * 5000)
    kept.mkdir()
    (kept / "old").mkdir()
    record = kept / "kept.json"
    record.write_text(json.dumps([{"dir": str(kept / "old"), "namespace": "jhub", "claim": "claim-a"}]))
    arg = json.dumps({"ns": "jhub", "paths": [str(tmp_path / "missing")], "kept": str(record), "hostpath": str(hp)})
    r = subprocess.run([sys.executable, "-c", D.DATA_PY, arg], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"}, check=False)   # no microk8s on PATH: the API is "down"
    out = D.parse_data(F.Raw(r.stdout, r.returncode))
    assert out["pv"] is None and out["hostpath_dirs"] == ["vol1"]
    assert out["sizes"][str(hp / "vol1")] >= 5000 and str(kept / "old") in out["sizes"]
    assert str(tmp_path / "missing") not in out["sizes"]

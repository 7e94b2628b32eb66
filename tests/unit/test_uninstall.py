"""`provision uninstall`: the plan as a pure function of gathered facts (stages/_uninstall.py): fresh, partly done
and done clusters, the order, --keep-cluster, --delete-data; the volume mover run for real on a temp dir; the
CLI refusing without --yes off a terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from provision.config import Settings
from provision.errors import ProvisionError
from provision.stage import RunCommand
from stages import _data as D
from stages import _uninstall as U

HP = D.HOSTPATH_DIR
DB_DIR = "jhub-hub-db-dir-pvc-1111"
BOB_DIR = "jhub-claim-bob-pvc-2222"


def settings(**kw) -> Settings:
    base = {"shared_storage_enabled": True, "shared_storage_path": "/data/share/homes",
            "workshop_lessons_path": "/data/share/lessons", "workshop_student_work_path": "/data/share/work",
            "enable_nginx_proxy": True}
    return Settings(**{**base, **kw})


def pv(name: str, claim: str, path: str, policy: str = "Delete", ns: str = "jhub") -> dict:
    return {"metadata": {"name": name},
            "spec": {"claimRef": {"namespace": ns, "name": claim}, "hostPath": {"path": path},
                     "persistentVolumeReclaimPolicy": policy, "storageClassName": "microk8s-hostpath",
                     "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}}


def items(*names: str) -> dict:
    return {"items": [{"metadata": {"name": n}} for n in names]}


def control(**over) -> dict:
    """A fresh single-node install: everything provision makes, data on hostpath-storage and shared storage."""
    pvs = [pv("pvc-db", "hub-db-dir", f"{HP}/{DB_DIR}"), pv("pvc-bob", "claim-bob", f"{HP}/{BOB_DIR}", "Retain"),
           pv("jhub-homes", "jhub-homes", "/data/share/homes", "Retain")]
    sizes = {f"{HP}/{DB_DIR}": 40960, f"{HP}/{BOB_DIR}": 3 * 1024 ** 2, "/data/share/homes": 10 ** 9,
             "/data/share/lessons": 2048, "/data/share/work": 4096}
    f = {"snap": True, "microk8s": True, "net": ["cni0", "vxlan.calico"],
         "units": ["provision-port-forward.service", "provision-usage-portal.service"],
         "links": {"/var/lib/kubelet": {"target": "/var/snap/microk8s/common/var/lib/kubelet", "dangling": False}},
         "kubelet_root": "/var/snap/microk8s/common/var/lib/kubelet",
         "mounts": ["/", "/var/snap/microk8s/common/var/lib/kubelet/pods/x/volumes/a",
                    "/var/snap/microk8s/common/var/lib/kubelet/pods/x/volumes/a/b", "/data/share"],
         "releases": [{"name": "jhub", "namespace": "jhub"}, {"name": "gpu-operator", "namespace": "gpu-operator"}],
         "namespaces": items("default", "kube-system", "jhub", "gpu-operator", "provision-smoke"),
         "nodes": items("node1"), "ascend_ds": None, "smoke_cm": {"metadata": {"name": "provision-smoke"}},
         "hub_pods": items("hub-1", "proxy-1", "jupyter-bob"),
         "data": {"pv": {"items": pvs}, "pvc": items("hub-db-dir"), "kept": [], "sizes": sizes,
                  "hostpath_dirs": [DB_DIR, BOB_DIR]},
         "nginx": {"present": True, "files": {"/etc/nginx/sites-available/jupyterhub": {"sha": "x"},
                                              "/etc/nginx/ssl/jupyterhub.crt": {"sha": "y"},
                                              "/etc/nginx/ssl/jupyterhub.key": None},
                   "link": "/etc/nginx/sites-available/jupyterhub", "active": "active"},
         "ufw": {"present": True, "active": True, "allowed": ["30080/tcp", "443/tcp", "22/tcp"]},
         "firewalld": {"present": False, "running": False, "runtime": [], "permanent": []}}
    f.update(over)
    return f


def worker(**over) -> dict:
    f = {"snap": True, "microk8s": True, "units": [], "net": ["vxlan.calico"], "links": {}, "mounts": [],
         "kubelet_root": "/var/snap/microk8s/common/var/lib/kubelet"}
    f.update(over)
    return f


def done_control() -> dict:
    return control(snap=False, microk8s=False, units=[], net=[], mounts=["/"], links={}, releases=None,
                   namespaces=None, nodes=None, smoke_cm=None, hub_pods=None,
                   data={"pv": None, "kept": [{"dir": f"{D.KEPT_DIR}/{DB_DIR}", "namespace": "jhub",
                                               "claim": "hub-db-dir"}],
                         "sizes": {f"{D.KEPT_DIR}/{DB_DIR}": 40960}, "hostpath_dirs": []},
                   nginx={"present": True, "files": {}, "link": "", "active": "active"},
                   ufw={"present": True, "active": True, "allowed": ["443/tcp"]})


def text(step: U.Step) -> str:
    return f"{step.node} {step.phase} {step.action.describe()}"


def index(plan: U.UninstallPlan, needle: str, node: str | None = None) -> int:
    for i, s in enumerate(plan.steps):
        if needle in s.action.describe() and (node is None or s.node == node):
            return i
    raise AssertionError(f"{needle!r} not in the plan:\n" + "\n".join(map(text, plan.steps)))


def test_fresh_cluster_order_data_safe_before_anything_goes():
    p = U.plan({"node1": control(), "w1": worker()}, "node1", ["w1"], settings(), U.Options())
    order = [index(p, "reclaim policy Retain on PV pvc-db"), index(p, "helm release jhub"),
             index(p, "helm release gpu-operator"), index(p, "stop the 3 pod(s)"),
             index(p, "wait until no pod runs"), index(p, "move"), index(p, "delete namespace gpu-operator"),
             index(p, "remove the Nginx site"), index(p, "close 30080/tcp in ufw"), index(p, "port-forward"),
             index(p, "stop the usage portal"),
             index(p, "remove the MicroK8s snap", "w1"), index(p, "stop MicroK8s", "node1"),
             index(p, "unmount", "node1"), index(p, "remove the MicroK8s snap", "node1"),
             index(p, "link /var/lib/kubelet", "node1")]
    assert order == sorted(order)
    assert "pvc-bob" not in " ".join(map(text, p.steps[:order[1]]))  # already Retain: not patched
    assert not any("reset" in s.action.describe() for s in p.steps)
    assert [s.phase for s in p.steps if s.node == "w1"] == ["worker"] * 2
    assert any("snap remove --purge microk8s" in s.action.describe() for s in p.steps)
    keep = next(s.action for s in p.steps if isinstance(s.action, U.KeepVolumes))
    assert dict(keep.sources) == {f"{D.KEPT_DIR}/{DB_DIR}": f"{HP}/{DB_DIR}", f"{D.KEPT_DIR}/{BOB_DIR}": f"{HP}/{BOB_DIR}"}
    records = {json.loads(e)["claim"]: json.loads(e) for e in keep.entries}
    assert records["hub-db-dir"]["dir"] == f"{D.KEPT_DIR}/{DB_DIR}" and records["claim-bob"]["namespace"] == "jhub"
    assert not p.deleted


def test_unmount_deepest_first_and_only_under_the_snap_and_the_kubelet():
    f = control(mounts=["/", "/var/lib/kubelet/pods/a", "/var/snap/microk8s/common/x",
                        "/var/snap/microk8s/common/x/y/z", "/var/snap/microk8s/current", "/data/share"])
    assert U.mounts_to_unmount(f) == ["/var/snap/microk8s/common/x/y/z", "/var/lib/kubelet/pods/a",
                                      "/var/snap/microk8s/common/x"]
    assert U.parse_mountinfo("36 35 98:0 / /mnt/with\\040space rw - ext4 /dev/x rw\n") == ["/mnt/with space"]


def test_plan_lists_what_is_kept_with_paths_and_sizes():
    p = U.plan({"node1": control()}, "node1", [], settings(), U.Options())
    kept = "\n".join(p.kept)
    assert f"hub-db: {D.KEPT_DIR}/{DB_DIR} (moved from {HP}/{DB_DIR}) on node1, 40.0 KiB" in kept
    assert f"home: {D.KEPT_DIR}/{BOB_DIR}" in kept and "3.0 MiB" in kept
    assert "shared: /data/share/homes on shared storage, 953.7 MiB" in kept
    assert "workshop: /data/share/lessons" in kept and "student-work: /data/share/work" in kept
    removed = "\n".join(p.removed)
    assert "helm release jhub (namespace jhub)" in removed and "node1: MicroK8s and its snap" in removed
    assert "/etc/nginx/ssl/jupyterhub.crt" in removed and "jupyterhub.key" not in removed  # only what is there
    assert any("80/443" in a for a in p.after)


def test_partly_done_run_plans_only_what_is_left():
    f = control(snap=False, microk8s=False, releases=None, namespaces=None, hub_pods=None, smoke_cm=None,
                mounts=["/"], net=["cni0"], units=[],
                links={"/var/lib/kubelet": {"target": "/var/snap/microk8s/common/var/lib/kubelet", "dangling": True},
                       "/opt/cni/bin": {"target": "/opt/real", "dangling": True}},
                data={"pv": None, "kept": [], "sizes": {}, "hostpath_dirs": []},
                nginx={"present": True, "files": {}, "link": "", "active": "active"}, ufw={"active": False})
    p = U.plan({"node1": f}, "node1", [], settings(), U.Options())
    assert [type(s.action).__name__ for s in p.steps] == ["RemoveLinks"]
    assert p.steps[0].action.paths == ("/var/lib/kubelet",) and p.steps[0].action.net == ("cni0",)


def test_done_cluster_plans_nothing_and_verifies_green():
    facts = {"node1": done_control(), "w1": worker(snap=False, net=[], microk8s=False)}
    p = U.plan(facts, "node1", ["w1"], settings(), U.Options())
    assert p.empty, list(map(text, p.steps))
    assert all(c.ok for c in U.verify(facts, "node1", settings(), U.Options()))
    assert any(f"{D.KEPT_DIR}/{DB_DIR}" in line for line in p.kept)


def test_verify_names_what_is_left():
    f = done_control()
    f.update(snap=True, net=["cni0"], mounts=["/var/lib/kubelet/pods/a"],
             links={"/var/lib/kubelet": {"target": "/var/snap/microk8s/common/var/lib/kubelet", "dangling": True}})
    f["data"]["sizes"] = {}
    bad = {c.name for c in U.verify({"node1": f}, "node1", settings(), U.Options()) if not c.ok}
    assert bad == {"node1: microk8s snap removed", "node1: no dangling MicroK8s link", "node1: no cni0 / vxlan.calico",
                   "node1: no mount left under /var/snap/microk8s/common or /var/lib/kubelet",
                   f"kept volumes present (1 in {D.KEPT_RECORD})"}


def test_keep_cluster_removes_only_what_runs_on_top():
    p = U.plan({"node1": control(), "w1": worker()}, "node1", ["w1"], settings(), U.Options(keep_cluster=True))
    steps = "\n".join(map(text, p.steps))
    assert "snap remove" not in steps and "stop MicroK8s" not in steps and "unmount" not in steps
    assert "delete namespace jhub" not in steps and "w1" not in steps
    assert index(p, "helm release jhub") < index(p, "keep in place") < index(p, "delete PV pvc-db")
    assert "pvc-bob" not in steps.split("helm release jhub")[1]  # the user's claim stays bound in the namespace
    assert "namespace jhub is KEPT" in "\n".join(p.removed)
    assert any(f"{HP}/{DB_DIR}" in k and "inside the snap's tree" in k for k in p.kept)


def test_delete_data_deletes_hostpath_volumes_never_shared_or_workshop():
    f = control()
    f["data"]["kept"] = [{"dir": f"{D.KEPT_DIR}/old", "namespace": "jhub", "claim": "claim-eve"}]
    p = U.plan({"node1": f}, "node1", [], settings(), U.Options(delete_data=True))
    steps = "\n".join(map(text, p.steps))
    assert "Retain" not in steps and not any(isinstance(s.action, U.KeepVolumes) for s in p.steps)
    assert steps.index("remove the MicroK8s snap") < steps.index(f"delete the volumes kept in {D.KEPT_DIR}")
    deleted = "\n".join(p.deleted)
    assert f"{HP}/{DB_DIR}" in deleted and f"{D.KEPT_DIR}/old" in deleted and "/data/share" not in deleted
    assert "/data/share/homes" in "\n".join(p.kept) and DB_DIR not in "\n".join(p.kept)
    kc = U.plan({"node1": control()}, "node1", [], settings(), U.Options(delete_data=True, keep_cluster=True))
    ksteps = "\n".join(map(text, kc.steps))
    assert "delete namespace jhub" in ksteps
    assert any(isinstance(s.action, RunCommand) and s.action.argv == ("rm", "-rf", "--", f"{HP}/{DB_DIR}")
               for s in kc.steps)
    assert not any(isinstance(s.action, RunCommand) and "/data/share" in " ".join(s.action.argv) for s in kc.steps)


def test_api_down_with_volumes_in_the_snap_is_refused_before_any_change():
    f = control(releases=None, namespaces=None, hub_pods=None)
    f["data"]["pv"] = None
    with pytest.raises(ProvisionError, match="claims of the 2 volume") as e:
        U.plan({"node1": f}, "node1", [], settings(), U.Options())
    assert "microk8s start" in e.value.hint and e.value.exit_code == 6  # refused, as --help says
    assert U.plan({"node1": f}, "node1", [], settings(), U.Options(delete_data=True)).deleted


def test_volume_mover_renames_records_and_is_idempotent(tmp_path):
    src, kept = tmp_path / "default-storage" / DB_DIR, tmp_path / "kept"
    src.mkdir(parents=True)
    (src / "jupyterhub.sqlite").write_bytes(b"db" * 1000)
    record = kept / "kept.json"
    entry = {"dir": str(kept / DB_DIR), "namespace": "jhub", "claim": "hub-db-dir"}
    kept.mkdir()
    record.write_text(json.dumps([{"dir": "/x", "namespace": "jhub", "claim": "claim-eve"}]))
    arg = json.dumps({"record": str(record), "entries": [entry], "src": {str(kept / DB_DIR): str(src)}})
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", U.KEEP_PY, arg], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
    assert not src.exists() and (kept / DB_DIR / "jupyterhub.sqlite").read_bytes() == b"db" * 1000
    assert {e["claim"] for e in json.loads(record.read_text())} == {"claim-eve", "hub-db-dir"}


def test_cli_refuses_without_yes_off_a_terminal_before_connecting(tmp_path, monkeypatch):
    from provision.commands.uninstall import uninstall

    env = tmp_path / "jhub.env"
    env.write_text("")
    monkeypatch.setattr("provision.inventory.open_inventory", lambda *a, **k: pytest.fail("connected"))
    r = CliRunner().invoke(uninstall, ["--env", str(env), "--log-file", str(tmp_path / "u.log")], input="")
    assert r.exit_code == 2, r.output
    assert "no terminal to ask on" in r.output and "--yes" in r.output


@pytest.mark.parametrize("typed, ok", [("delete\n", True), ("yes\n", False), ("\n", False)])
def test_delete_data_asks_for_the_word_on_a_terminal_even_with_yes(monkeypatch, typed, ok):
    import io

    from provision.commands.uninstall import _confirm
    from provision.console import Console

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    p = U.plan({"node1": control()}, "node1", [], settings(), U.Options(delete_data=True))
    if ok:
        _confirm(Console(stream=out, tty=False), p, U.Options(delete_data=True), yes=True, interactive=True)
    else:
        with pytest.raises(ProvisionError, match="not confirmed: nothing changed") as e:
            _confirm(Console(stream=out, tty=False), p, U.Options(delete_data=True), yes=True, interactive=True)
        assert e.value.exit_code == 6
    assert "Type `delete`" in out.getvalue()
    # off a terminal --yes is the answer (the CLI refuses earlier without it)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    _confirm(Console(stream=io.StringIO(), tty=False), p, U.Options(delete_data=True), yes=True, interactive=False)


def test_ascend_plugin_and_only_its_node_labels_go():
    def node(name, value):
        return {"metadata": {"name": name, "labels": {"accelerator": value} if value else {}}}

    ds = {"metadata": {"name": "ascend-device-plugin-daemonset", "labels": {"app.kubernetes.io/managed-by": "provision"}},
          "spec": {"template": {"spec": {"nodeSelector": {"accelerator": "huawei-Ascend910"}}}}}
    f = control(ascend_ds=ds, nodes={"items": [node("npu-1", "huawei-Ascend910"), node("gpu-1", "nvidia-a100"),
                                               node("cpu-1", None)]})
    p = U.plan({"node1": f}, "node1", [], settings(), U.Options(keep_cluster=True))
    argvs = [s.action.argv for s in p.steps if isinstance(s.action, RunCommand)]
    assert ("microk8s", "kubectl", "delete", "daemonset", "ascend-device-plugin-daemonset", "-n", "kube-system",
            "--ignore-not-found") in argvs
    assert [a for a in argvs if "label" in a] == [("microk8s", "kubectl", "label", "node", "npu-1", "accelerator-")]
    foreign = dict(ds, metadata={"name": ds["metadata"]["name"], "labels": {}})   # not ours: left alone
    q = U.plan({"node1": control(ascend_ds=foreign)}, "node1", [], settings(), U.Options(keep_cluster=True))
    assert not any("ascend" in s.action.describe().lower() for s in q.steps)


def test_the_usage_portal_goes_its_port_closes_and_its_records_stay():
    s = settings(enable_usage_portal=True)
    p = U.plan({"node1": control(ufw={"present": True, "active": True, "allowed": ["30080/tcp", "29781/tcp"]})},
               "node1", [], s, U.Options())
    steps = list(map(text, p.steps))
    assert any("close 29781/tcp in ufw" in x for x in steps) and any("stop the usage portal" in x for x in steps)
    assert "usage portal records: /var/lib/provision/usage.db on node1" in p.kept
    assert not any("29781" in x for x in map(text, U.plan({"node1": control()}, "node1", [], settings(),
                                                            U.Options()).steps))

"""`provision diag` / stage 90: each check's logic over real-shaped facts, the report, the exit codes, the
table, and that collection only reads (stages/_diag.py, stages/_diag_checks.py, provision/commands/diag.py)."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

import pytest

from provision.config import Settings
from provision.errors import TransportError
from provision.stage import Check, Node, Role
from stages import _diag as D
from stages import _diag_checks as C
from stages import _diag_cluster as K

NOW = 1_800_000_000.0
CONTROL = Node("cp", "10.0.0.1", frozenset({Role.CONTROL}))
WORKER = Node("w1", "10.0.0.2", frozenset({Role.WORKER}))


def settings(**kw) -> Settings:
    base = {"use_gpu_operator": True, "enable_nginx_proxy": True, "shared_storage_enabled": True}
    base.update(kw)
    return Settings(**base)


@dataclass(frozen=True)
class Img:
    ref: str
    digest: str = "sha256:aa"


@dataclass
class Manifest:
    images: list = field(default_factory=list)

    def images_for_roles(self, roles):
        return list(self.images)

    def image(self, ref):
        return next((i for i in self.images if i.ref == ref), None)

    def snap(self, name):
        return None


def node(name="cp", ready=True, gpus=0, unschedulable=False, pressure=()):
    conds = [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletNotReady",
              "message": "container runtime network not ready: cni plugin not initialized"}]
    conds += [{"type": t, "status": "True"} for t in pressure]
    alloc = {"cpu": "8", "memory": "32Gi"} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    return {"metadata": {"name": name, "labels": {}}, "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"conditions": conds, "allocatable": alloc, "capacity": alloc,
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.30.14"}}}


def pod(name, ns="jhub", node_name="cp", ready=True, gpus=0, labels=None, annotations=None, waiting=None):
    c = {"name": "notebook", "image": "img:1", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}}
    st = {"phase": "Running" if ready else "Pending",
          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if waiting:
        st["containerStatuses"] = [{"name": "notebook", "state": {"waiting": {"reason": waiting, "message": "x"}}}]
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"nodeName": node_name, "containers": [c]}, "status": st}


# ---------------------------------------------------------------------------------------------
# Node checks


@pytest.mark.parametrize(("avail", "size", "status"), [(26, 100, "ok"), (25, 100, "warn"), (16, 100, "warn"),
                                                       (15, 100, "fail"), (0, 100, "fail")])
def test_disk_use_at_kubelets_image_gc_threshold_fails_and_75_percent_warns(avail, size, status):
    gib = 1024**3
    [c] = C.check_disk({"disk": {"mount": "/", "size": size * gib, "avail": avail * gib}})
    assert D.status(c) == status
    if status == "fail":
        assert "kubelet will delete imported images that no pod uses" in c.detail
        assert "offline they cannot be pulled back" in c.detail and "--only 20" in c.hint


def test_clock_skew_fails_only_when_the_whole_interval_is_beyond_the_limit():
    control = {"clock": 1000.0, "local_clock": {"before": 1000.0, "after": 1000.5}}
    far = {"clock": 1100.0, "local_clock": {"before": 1000.0, "after": 1000.5}}
    [c] = C.check_clock(far, control, 30, "cp")
    assert not c.ok and not c.warning and "100 s ahead of cp" in c.detail and "chrony" in c.hint
    slow = {"clock": 1040.0, "local_clock": {"before": 1000.0, "after": 1060.0}}  # a 60 s round trip: unknowable
    assert C.check_clock(slow, control, 30, "cp")[0].ok
    near = {"clock": 1005.0, "local_clock": {"before": 1000.0, "after": 1000.5}}
    assert C.check_clock(near, control, 30, "cp")[0].ok


def test_gpus_allocatable_must_match_the_driver_and_all_in_use_warns_with_the_pods():
    kn = node(gpus=2)
    [c] = C.check_devices("gpus", C.GPU, 4, kn, {"items": []}, "fix it")
    assert not c.ok and "driver sees 4 gpus, Kubernetes offers 2" in c.detail
    held = {"items": [pod("jupyter-bob", gpus=1), pod("jupyter-eve", gpus=1), pod("done", gpus=1)]}
    held["items"][2]["status"]["phase"] = "Succeeded"
    [c] = C.check_devices("gpus", C.GPU, 2, kn, held, "fix")
    assert c.warning and not c.ok
    assert c.detail == "new GPU spawns will wait: 2 of 2 in use by jhub/jupyter-bob, jhub/jupyter-eve"
    [c] = C.check_devices("gpus", C.GPU, 2, kn, {"items": [pod("jupyter-bob", gpus=1)]}, "fix")
    assert c.ok and "1 in use" in c.detail


def test_accelerator_checks_only_for_nodes_with_devices_when_the_operator_is_on():
    facts = {"nvidia_smi": {"ok": True, "gpus": [{}]}, "nvidia_pci": 1}
    assert C.accelerator_checks(facts, node(gpus=1), {"items": []}, settings())[0].ok
    assert C.accelerator_checks(facts, node(gpus=1), {"items": []}, settings(use_gpu_operator=False)) == []
    assert C.accelerator_checks({"nvidia_smi": {}, "nvidia_pci": 0}, node(), {"items": []}, settings()) == []


def test_images_missing_fail_with_the_refs_and_a_missing_bundle_only_warns():
    m = Manifest([Img("a:1"), Img("b:1"), Img("c:1")])
    facts = {"ctr_images": {"available": True, "images": {"a:1": "sha256:aa"}}}
    [c] = C.check_images(facts, frozenset({Role.CONTROL}), m, "")
    assert not c.ok and not c.warning and "2 of 3" in c.detail and "b:1, c:1" in c.detail
    assert "provision install --only 20" in c.hint
    [c] = C.check_images(facts, frozenset({Role.CONTROL}), None, "no offline bundle at /x")
    assert c.warning and "not checked: no offline bundle at /x" in c.detail
    ok = {"ctr_images": {"available": True, "images": {"a:1": "sha256:aa", "b:1": "sha256:aa", "c:1": "sha256:aa"}}}
    assert C.check_images(ok, frozenset({Role.CONTROL}), m, "")[0].ok
    assert C.check_images({"ctr_images": {"available": False}}, frozenset(), m, "") == []  # containerd says why


def test_node_ready_pressure_and_cordon():
    [c] = C.check_node_ready(None, "w9")
    assert not c.ok and "provision node add" in c.hint
    checks = {c.name: c for c in C.check_node_ready(node(ready=False, pressure=("DiskPressure",)), "cp")}
    assert not checks["node ready"].ok and "cni plugin not initialized" in checks["node ready"].detail
    assert not checks["node pressure"].ok and "DiskPressure" in checks["node pressure"].detail
    cordoned = {c.name: c for c in C.check_node_ready(node(unschedulable=True), "cp")}
    assert cordoned["node schedulable"].warning and "uncordon" in cordoned["node schedulable"].hint


def test_snap_not_held_warns():
    facts = {"snap_list": {"present": True, "snaps": {"microk8s": {"version": "v1.30.14", "rev": "7394",
                                                                    "tracking": "-", "notes": ["classic"]}}}}
    checks = {c.name: c for c in C.check_snap(facts, None)}
    assert checks["microk8s snap"].ok and checks["microk8s refresh hold"].warning
    assert checks["microk8s refresh hold"].hint == "sudo snap refresh --hold microk8s"
    assert not C.check_snap({"snap_list": {"present": True, "snaps": {}}}, None)[0].ok


def test_kube_node_found_by_hostname_or_address():
    nodes = {"items": [node("gpu-1")]}
    assert C.kube_node({"hostname": {"hostname": "GPU-1"}, "node": {"name": "10.9.9.9"}}, nodes)
    assert C.kube_node({"hostname": {"hostname": "x"}, "node": {"name": "10.0.0.1", "address": "10.0.0.1"}}, nodes)
    assert C.kube_node({"hostname": {"hostname": "x"}, "node": {"name": "y", "address": "10.0.0.7"}}, nodes) is None


# ---------------------------------------------------------------------------------------------
# Cluster checks


def test_coredns_forwarding_to_a_public_resolver_fails():
    cm = {"data": {"Corefile": ".:53 {\n    errors\n    forward . 8.8.8.8 8.8.4.4\n    cache 30\n}\n"}}
    checks = {c.name: c for c in K.check_dns({"k_pods": {"items": []}, "k_coredns": cm}, settings())}
    assert not checks["coredns upstream"].ok and "8.8.8.8" in checks["coredns upstream"].detail
    assert "DNS_SERVERS_CSV" in checks["coredns upstream"].hint
    assert not checks["coredns"].ok  # no pod
    cm["data"]["Corefile"] = cm["data"]["Corefile"].replace("8.8.8.8 8.8.4.4", "10.0.0.53")
    assert K.check_dns({"k_pods": {"items": []}, "k_coredns": cm}, settings())[1].ok


def _pvc(name, phase):
    return {"metadata": {"name": name, "namespace": "jhub"}, "status": {"phase": phase}}


def test_storage_claims_hub_and_homes_must_be_bound_user_claims_warn():
    c = {"k_sc": {"items": [{"metadata": {"name": "microk8s-hostpath", "annotations": {
        "storageclass.kubernetes.io/is-default-class": "true"}}}]},
         "k_pvc": {"items": [_pvc("hub-db-dir", "Pending"), _pvc("jhub-homes", "Bound"), _pvc("claim-alice", "Bound"),
                             _pvc("claim-bob", "Pending")]},
         "helm": [{"name": "jhub", "namespace": "jhub", "status": "deployed"}]}
    checks = {x.name: x for x in K.check_storage(c, settings())}
    assert checks["storage class"].ok and not checks["pvc hub-db-dir"].ok and checks["pvc jhub-homes"].ok
    assert checks["user volumes"].warning and "claim-bob (Pending)" in checks["user volumes"].detail


def test_helm_release_failed_or_pending_fails_with_the_way_out():
    c = {"helm": [{"name": "jhub", "namespace": "jhub", "status": "failed", "chart": "jupyterhub-4.4.0"},
                  {"name": "gpu-operator", "namespace": "gpu-operator", "status": "pending-upgrade"}],
         "k_runtimeclass": {"items": [{"metadata": {"name": "nvidia"}, "handler": "nvidia"}]}}
    checks = {x.name: x for x in K.check_helm(c, settings())}
    assert not checks["helm jhub"].ok and "--only 70" in checks["helm jhub"].hint
    assert "rollback gpu-operator" in checks["helm gpu-operator"].hint and "--only 50" in checks["helm gpu-operator"].hint
    assert checks["runtime class nvidia"].ok
    missing = {x.name: x for x in K.check_helm({"helm": [], "k_runtimeclass": None}, settings())}
    assert not missing["helm jhub"].ok and not missing["runtime class nvidia"].ok


def test_user_pod_in_error_fails_waiting_warns_both_point_at_diag_spawn():
    dep = {"metadata": {"name": "hub", "generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1, "replicas": 1}}
    proxy = {**dep, "metadata": {"name": "proxy", "generation": 1}}
    c = {"helm": [{"name": "jhub", "namespace": "jhub", "status": "deployed"}],
         "k_deploy": {"items": [dep, proxy]},
         "k_pods": {"items": [pod("hub-1", labels={"component": "hub"}), pod("proxy-1", labels={"component": "proxy"}),
                              pod("jupyter-alice", ready=False, waiting="ImagePullBackOff",
                                  labels={"component": "singleuser-server"},
                                  annotations={"hub.jupyter.org/username": "alice"})]}}
    checks = {x.name: x for x in K.check_hub(c, settings())}
    assert checks["hub"].ok and checks["proxy"].ok
    assert not checks["user alice"].ok and "ImagePullBackOff" in checks["user alice"].detail
    assert checks["user alice"].hint == "`provision diag spawn alice` explains why"
    assert not checks["user alice"].warning  # an error state fails
    waiting = pod("jupyter-carol", ready=False, labels={"component": "singleuser-server"},
                  annotations={"hub.jupyter.org/username": "carol"})
    waiting["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
    c["k_pods"]["items"].append(waiting)
    carol = {x.name: x for x in K.check_hub(c, settings())}["user carol"]
    assert not carol.ok and carol.warning and "Pending, not PodScheduled" in carol.detail  # waits for a free GPU
    c["k_pods"]["items"] = c["k_pods"]["items"][1:]
    assert not {x.name: x for x in K.check_hub(c, settings())}["hub"].ok


def _pem(days_left: float) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub.example")])
    now = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=100))
            .not_valid_after(now + datetime.timedelta(days=days_left)).sign(key, hashes.SHA256()))
    return {"rc": 0, "out": cert.public_bytes(serialization.Encoding.PEM).decode()}


def test_certificate_expired_fails_within_30_days_warns():
    [c] = K.check_certificate(_pem(-1), NOW)
    assert not c.ok and not c.warning and "expired" in c.detail
    assert "NGINX_PROXY_CERT_FILE" in c.hint and "provision install --only 80" in c.hint
    [c] = K.check_certificate(_pem(10), NOW)
    assert c.warning and "expires in 10 day(s)" in c.detail
    assert K.check_certificate(_pem(90), NOW)[0].ok
    assert not K.check_certificate({"rc": 1, "out": ""}, NOW)[0].ok


def test_nginx_test_failure_and_missing_site_fail():
    c = {"nginx": {"present": True, "files": {}, "link": "", "active": "active"},
         "nginx_test": {"rc": 1, "out": 'nginx: [emerg] unknown directive "x"\nnginx: configuration file test failed'},
         "cert_pem": _pem(90)}
    checks = {x.name: x for x in K.check_nginx(c, settings(), NOW)}
    assert not checks["nginx site"].ok and not checks["nginx -t"].ok and "emerg" in checks["nginx -t"].detail
    assert K.check_nginx(c, settings(enable_nginx_proxy=False), NOW) == []


def test_firewall_active_without_the_ports_fails():
    c = {"ufw": {"present": True, "active": True, "allowed": ["30080/tcp"]}, "firewalld": {"present": False}}
    [x] = K.check_firewall(c, settings())
    assert not x.ok and "443/tcp" in x.detail and "--only 80" in x.hint
    [x] = K.check_firewall({"ufw": {"present": True, "active": False}, "firewalld": {}}, settings())
    assert x.ok and "ufw inactive" in x.detail


# ---------------------------------------------------------------------------------------------
# The report, the table, the stage


def test_report_exit_codes_counts_and_worst_first():
    ok, warn, fail = Check("a", True, "fine"), Check("b", False, "meh", "fix b", warning=True), Check("c", False, "x", "fix c")
    assert D.DiagReport({"cp": [ok]}, {}).exit_code == 0
    assert D.DiagReport({"cp": [ok, warn]}, {}).exit_code == 1
    r = D.DiagReport({"cp": [ok, warn], "cluster": [fail]}, {}, ["cp"])
    assert r.exit_code == 2 and r.counts == {"ok": 1, "warn": 1, "fail": 1}
    d = r.to_dict()
    assert [c["status"] for c in d["checks"]["cp"]] == ["warn", "ok"]
    assert d["checks"]["cluster"] == [{"status": "fail", "name": "c", "detail": "x", "hint": "fix c"}]
    assert d["summary"] == {"ok": 1, "warn": 1, "fail": 1} and d["exit_code"] == 2


def test_table_lists_failures_then_warnings_then_folds_ok_checks():
    from provision.commands.diag import render

    checks = {"cp": [Check("disk", True, "1%"), Check("images", False, "1 missing", "import", warning=True)],
              "cluster": [Check("hub", False, "no pod", "install --only 70"), Check("proxy", True, "ready")]}
    lines = render(D.DiagReport(checks, {}, ["cp"])).splitlines()
    assert lines[2].startswith("FAIL") and "hub" in lines[2] and "fix: install --only 70" in lines[2]
    assert lines[3].startswith("warn") and lines[4].startswith("ok") and "1 passed" in lines[4]
    assert lines[-1].startswith("failures: 1 failed, 1 warning(s), 2 ok")


def test_probe_scripts_only_read():
    """diag runs nothing that changes a node: no kubectl verb but get/logs, no writes, no service changes."""
    script = "\n".join(p.script for p in D.node_probes() + D.cluster_probes(settings()))
    assert re.findall(r"microk8s kubectl (\w+)", script) and set(re.findall(r"microk8s kubectl (\w+)", script)) <= {"get"}
    for word in ("apply", "delete", "patch", "scale", "kubectl create", "ctr image rm", "ctr images rm", "image import", " rm ",
                 "mv ", "tee ", "systemctl start", "systemctl restart", "systemctl reload", "ufw allow", "--add-port",
                 "helm3 upgrade", "helm3 install", "helm3 uninstall", "snap refresh"):
        assert word not in script, word
    from stages import _spawn as S

    spawn = "\n".join(p.script for p in S.probes("jhub", "alice"))
    assert set(re.findall(r"microk8s kubectl (\w+)", spawn)) == {"get", "logs", "exec"}  # exec: the read-only DB query


class _Host:
    def __init__(self, name, fail=None):
        self.name, self.fail = name, fail

    def run(self, argv, **kw):
        raise self.fail or AssertionError("not scripted")


class _Inv:
    def __init__(self, hosts):
        self.hosts = hosts
        self.nodes = [CONTROL, WORKER]
        self.control = CONTROL

    def host(self, n):
        return self.hosts[n.name if hasattr(n, "name") else n]


def test_control_node_unreachable_is_exit_3_another_node_is_a_failed_check(monkeypatch):
    down = TransportError("cp: cannot connect to 10.0.0.1:22: Connection refused", "check sshd")
    with pytest.raises(Exception) as e:
        D.collect(_Inv({"cp": _Host("cp", down), "w1": _Host("w1", down)}), settings(), None)
    assert getattr(e.value, "exit_code", None) == 3 and "cannot reach the control-plane node cp" in str(e.value)

    def fake_gather(host, s, n):
        if n.name == "w1":
            raise TransportError("w1: cannot connect", "check that w1 is up")
        return {"node": {"name": n.name, "address": n.address, "control": True}, "k_nodes": None,
                "os_release": {"ID": "ubuntu", "VERSION_ID": "24.04"}, "disk": {}, "clock": 1.0,
                "local_clock": {"before": 1.0, "after": 1.0}}

    monkeypatch.setattr(D, "gather", fake_gather)
    report = D.collect(_Inv({"cp": _Host("cp"), "w1": _Host("w1")}), settings(), None)
    assert report.checks["w1"] == [Check("reachable", False, "cannot connect", "check that w1 is up")]
    assert not report.checks["cluster"][0].ok and report.checks["cluster"][0].name == "api server"
    assert report.exit_code == 2


def test_stage_90_plans_nothing_and_reports_cluster_checks_on_the_control_node(monkeypatch):
    from provision.stage import discover
    from stages.s90_diagnostics import Diagnostics

    assert discover()[-1] is Diagnostics and Diagnostics.number == 90
    st = Diagnostics()
    assert st.plan({}, settings(), CONTROL).empty
    monkeypatch.setattr(C, "all_checks", lambda *a: {"cp": [Check("disk", True)], "cluster": [Check("hub", False)]})
    out = st.verify_all({"cp": {}}, settings(), [CONTROL, WORKER])
    assert [c.name for c in out["cp"]] == ["disk", "hub"] and "cluster" not in out


def test_diag_own_options_before_spawn_are_refused():
    from click.testing import CliRunner

    from provision.commands.diag import diag

    r = CliRunner().invoke(diag, ["--json", "spawn", "alice"])
    assert r.exit_code == 2 and "--json belong to `provision diag` itself" in r.output


def test_failed_persistent_volumes_warn():
    c = {"k_sc": {"items": []}, "k_pvc": {"items": []}, "helm": [],
         "k_pv": {"items": [{"metadata": {"name": "pvc-1"}, "status": {"phase": "Failed", "message": "recycle failed"}},
                            {"metadata": {"name": "pvc-2"}, "status": {"phase": "Bound"}}]}}
    checks = {x.name: x for x in K.check_storage(c, settings(shared_storage_enabled=False))}
    assert checks["persistent volumes"].warning and "pvc-1 (recycle failed)" in checks["persistent volumes"].detail
    assert checks["storage class"].warning  # no default StorageClass


def test_facts_are_json_for_the_support_bundle():
    """collect's facts go into the support bundle as JSON: every probe's parsed value must serialise."""
    import json

    from provision import facts as F

    for out, rc in (("", 0), ("", 1), ("", 127), ('{"items": []}', 0), ("[]", 0)):
        parsed = {p.name: p.parse(F.Raw(out, rc)) for p in D.node_probes() + D.cluster_probes(settings())}
        json.dumps(parsed)


# ---------------------------------------------------------------------------------------------
# The usage portal (ENABLE_USAGE_PORTAL=true): service, /healthz, database, collector freshness, its port


def portal_facts(active="active", status=200, db="ok", collector="on", last=None, reason="", **more):
    body = {"db": db, "collector": collector, "ok": db == "ok",
            "last_collection": last if last is not None else {"at": "2026-11-30T12:00:00Z", "ok": True, "error": "",
                                                              "age_seconds": 12.0, "last_ok_at": "2026-11-30T12:00:00Z"}}
    if reason:
        body["collector_reason"] = reason
    return {"usage_active": active, "usage_health": {"status": status, "body": body if status else {"text": "refused"}}} | more


def portal_checks(facts, **kw):
    return {c.name: c for c in K.check_usage_portal(facts, settings(enable_usage_portal=True, **kw))}


def test_usage_portal_checks_and_probes_only_when_it_is_enabled():
    assert K.check_usage_portal(portal_facts(active="inactive"), settings()) == []
    assert not [p for p in D.cluster_probes(settings()) if p.name.startswith("usage_")]
    probes = {p.name: p.script for p in D.cluster_probes(settings(enable_usage_portal=True, usage_portal_port=29999))}
    assert "systemctl is-active provision-usage-portal.service" in probes["usage_active"]
    assert "http://127.0.0.1:29999/healthz" in probes["usage_health"]


def test_a_healthy_portal_is_four_ok_checks():
    checks = portal_checks(portal_facts())
    assert list(checks) == ["usage portal service", "usage portal health", "usage database", "usage collector"]
    assert all(c.ok for c in checks.values())
    assert checks["usage collector"].detail == "last collection 12 s ago (every 30 s)"


def test_a_stopped_portal_fails_with_the_journal_and_says_what_the_hub_does_meanwhile():
    checks = portal_checks(portal_facts(active="failed", status=0), enable_usage_limit_enforcer=True,
                           usage_limit_fail_mode="open")
    svc, health = checks["usage portal service"], checks["usage portal health"]
    assert not svc.ok and not svc.warning and "is failed" in svc.detail and "fail open" in svc.detail
    assert "journalctl -u provision-usage-portal.service" in svc.hint and "--only 75" in svc.hint
    assert not health.ok and "does not answer (refused)" in health.detail
    assert "usage database" not in checks and "usage collector" not in checks  # nothing more can be said


def test_an_unreachable_database_fails_with_the_portals_own_words():
    checks = portal_checks(portal_facts(status=503, db="unreachable: ProvisionError: connection refused",
                                        last={}))
    assert checks["usage portal health"].ok  # it answers
    db = checks["usage database"]
    assert not db.ok and "connection refused" in db.detail and "USAGE_DB_URL" in db.hint


def test_collector_off_warns_with_why_and_a_stale_one_fails():
    off = portal_checks(portal_facts(collector="off", reason="no cluster at /x (no such file); recording stops "
                                     "until it is reachable"))["usage collector"]
    assert not off.ok and off.warning and "no cluster at /x" in off.detail
    stale = portal_checks(portal_facts(last={"at": "2026-11-30T12:00:00Z", "ok": True, "error": "",
                                             "age_seconds": 95.0, "last_ok_at": "2026-11-30T12:00:00Z"}))
    c = stale["usage collector"]
    assert not c.ok and not c.warning and "95 s ago" in c.detail and "3 x USAGE_COLLECT_INTERVAL = 90 s" in c.detail
    assert "microk8s status" in c.hint
    # the latest run 10 s ago failed, the last good one 80 s before it: 90 s, stale, with the error
    failing = portal_checks(portal_facts(last={"at": "2026-11-30T12:01:20Z", "ok": False, "error": "API down",
                                               "age_seconds": 10.0, "last_ok_at": "2026-11-30T12:00:00Z"}))
    c = failing["usage collector"]
    assert not c.ok and "90 s ago" in c.detail and "last error: API down" in c.detail
    recent = portal_checks(portal_facts(last={"at": "2026-11-30T12:00:40Z", "ok": False, "error": "blip",
                                              "age_seconds": 5.0, "last_ok_at": "2026-11-30T12:00:00Z"}))
    assert recent["usage collector"].ok  # one failed run within the limit is fine
    never = portal_checks(portal_facts(last={"at": "2026-11-30T12:00:40Z", "ok": False, "error": "403",
                                             "age_seconds": 5.0, "last_ok_at": None}))["usage collector"]
    assert not never.ok and "never succeeded" in never.detail
    fresh_start = portal_checks(portal_facts(last={}), usage_collect_interval=60)["usage collector"]
    assert fresh_start.warning and "no collection recorded yet" in fresh_start.detail and "60 s" in fresh_start.hint


def test_a_firewall_without_the_portals_port_fails():
    facts = portal_facts(ufw={"present": True, "active": True, "allowed": ["30080/tcp"]}, firewalld={})
    c = portal_checks(facts)["usage portal port"]
    assert not c.ok and "ufw active without 29781/tcp" in c.detail and "--only 75" in c.hint
    facts["ufw"]["allowed"].append("29781/tcp")
    assert "usage portal port" not in portal_checks(facts)


def test_portal_checks_run_even_when_the_api_server_does_not_answer():
    out, _ = K.cluster_checks(portal_facts(active="inactive"), settings(enable_usage_portal=True), CONTROL, {})
    assert [c.name for c in out][:2] == ["api server", "usage portal service"]


def test_portal_probes_only_read_and_parse_to_json():
    import json

    from provision import facts as F

    s = settings(enable_usage_portal=True)
    script = "\n".join(p.script for p in D.cluster_probes(s))
    for word in ("systemctl start", "systemctl restart", "systemctl stop", "curl -X", "POST", "DELETE"):
        assert word not in script, word
    for out, rc in (("", 0), ("", 1), ("200\n{\"db\": \"ok\"}", 0), ("active\n", 0)):
        json.dumps({p.name: p.parse(F.Raw(out, rc)) for p in D.cluster_probes(s)})


def test_a_portal_that_cannot_read_the_hubs_groups_warns_with_the_role_fix():
    facts = portal_facts()
    facts["usage_health"]["body"]["hub_groups"] = {"ok": False, "error": "HTTP 403: the service needs list:groups"}
    c = portal_checks(facts)["usage hub groups"]
    assert not c.ok and c.warning and "HTTP 403" in c.detail and "--from 70" in c.hint
    facts["usage_health"]["body"]["hub_groups"] = {"ok": True, "error": ""}
    assert "usage hub groups" not in portal_checks(facts)

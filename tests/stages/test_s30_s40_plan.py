"""Pure plan tests for stages 30 (Calico) and 40 (DNS and storage); manifests validated with
kubernetes-validate --strict."""

from __future__ import annotations

import copy

import pytest
import yaml

from provision import facts as F
from provision.config import Settings
from provision.errors import BundleError, ConflictError
from provision.stage import RunCommand
from stages import _microk8s as M
from stages import s30_calico as s30
from stages import s40_dns_storage as s40
from tests.stages import stagefacts as sf

CNI_YAML = """---
kind: DaemonSet
apiVersion: apps/v1
metadata:
  name: calico-node
  namespace: kube-system
spec:
  template:
    spec:
      initContainers:
        - name: install-cni
          image: docker.io/calico/cni:v3.25.1
      containers:
        - name: calico-node
          image: docker.io/calico/node:v3.25.1
          env:
            - name: CALICO_IPV4POOL_CIDR
              value: "10.1.0.0/16"
            - name: IP_AUTODETECTION_METHOD
              value: "first-found"
---
kind: Deployment
spec:
  template:
    spec:
      containers:
        - name: calico-kube-controllers
          image: docker.io/calico/kube-controllers:v3.25.1
"""

NICS_ONE = "eth0\nlo\n---\n1: lo    inet 127.0.0.1/8 scope host lo\n2: eth0    inet 10.0.0.11/24 brd 10.0.0.255 scope global eth0\n"
NICS_IB = ("eno1\nib0\nlo\ncali1234\nvxlan.calico\n---\n2: eno1    inet 10.0.0.11/24 scope global eno1\n"
           "5: ib0    inet 192.168.100.11/24 scope global ib0\n")
ROUTE_ENO1 = ("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
              "eno1\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\n---\n")


def pod(name: str, node: str, ready: bool = True, waiting: str = "") -> dict:
    st: dict = {"phase": "Running" if ready else "Pending",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if waiting:
        st["containerStatuses"] = [{"name": "calico-node", "state": {"waiting": {"reason": waiting}}}]
    return {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": st}


def nodes(*names: str) -> dict:
    return {"items": [{"metadata": {"name": n}} for n in names]}


def ds(method: str = "first-found", ready: int = 1) -> dict:
    return {"metadata": {"name": "calico-node", "generation": 2},
            "spec": {"template": {"spec": {"containers": [
                {"name": "calico-node", "env": [{"name": "IP_AUTODETECTION_METHOD", "value": method}]}]}}},
            "status": {"observedGeneration": 2, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1,
                       "numberReady": ready}}


def facts30(cni: str | None = CNI_YAML, nics: str = NICS_ONE, route: str = ROUTE_ENO1, daemonset: dict | None = None,
            pods: list | None = None, node_list: tuple = ("cp1",)) -> sf.StrictFacts:
    return sf.StrictFacts({
        "status": M.parse_installed(sf.raw("/snap/bin/microk8s\n")),
        "default_route": F.parse_default_route(sf.raw(route)),
        "nics": s30.parse_nics(sf.raw(nics)),
        "cni_yaml": cni,
        "calico_ds": ds() if daemonset is None else daemonset,
        "pods": {"items": [pod("calico-node-abcde", "cp1")] if pods is None else pods},
        "nodes": nodes(*node_list),
        "bundle": sf.manifest(),
    })


def test_calico_single_nic_converged_plans_nothing():
    plan = s30.plan(facts30(), Settings(), sf.CONTROL)
    assert plan.empty, [a.describe() for a in plan.actions]
    assert all(c.ok for c in s30.verify(facts30(), Settings(), sf.CONTROL))


def test_calico_multi_nic_pins_can_reach_the_control_ip():
    f = facts30(nics=NICS_IB)
    plan = s30.plan(f, Settings(), sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["PinAutodetect", "WaitPods"]
    assert plan.actions[0].method == "can-reach=10.0.0.11"
    new = s30.set_autodetect_method(CNI_YAML, "can-reach=10.0.0.11")
    assert s30.autodetect_method(new) == "can-reach=10.0.0.11"
    assert new.replace("can-reach=10.0.0.11", "first-found") == CNI_YAML
    done = facts30(cni=new, nics=NICS_IB, daemonset=ds("can-reach=10.0.0.11"))
    assert s30.plan(done, Settings(), sf.CONTROL).empty


def test_calico_mgmt_interface_setting_wins():
    s = Settings(mgmt_interface="bond0.100")
    plan = s30.plan(facts30(), s, sf.CONTROL)
    assert plan.actions[0].method == r"interface=^bond0\.100$"


@pytest.mark.parametrize("iface", ["eth0", "bond0.100", "enp3s0-mgmt", "ib0"])
def test_calico_interface_pin_is_valid_yaml_and_matches_only_that_interface(iface):
    """The written cni.yaml must parse (a `\\.` inside a double-quoted scalar once broke it) and carry a
    regex that matches exactly the interface; applying it again is a no-op."""
    import re

    method = s30.desired_method(facts30(), Settings(mgmt_interface=iface), sf.CONTROL)
    new = s30.set_autodetect_method(CNI_YAML, method)
    docs = list(yaml.safe_load_all(new))  # raises on an invalid escape
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "IP_AUTODETECTION_METHOD", "value": method} in env
    assert {"name": "CALICO_IPV4POOL_CIDR", "value": "10.1.0.0/16"} in env  # the rest untouched
    pattern = method.removeprefix("interface=")
    assert re.search(pattern, iface)
    for other in (iface + "0", "x" + iface, iface.replace(".", "x"), "eth1"):
        assert other == iface or not re.search(pattern, other), other
    assert s30.set_autodetect_method(new, method) == new
    done = facts30(cni=new, daemonset=ds(method))
    assert s30.plan(done, Settings(mgmt_interface=iface), sf.CONTROL).empty


def test_calico_repairs_the_invalid_escape_an_earlier_version_wrote():
    broken = CNI_YAML.replace('"first-found"', '"interface=^bond0\\.100$"')
    with pytest.raises(yaml.YAMLError):
        list(yaml.safe_load_all(broken))
    s = Settings(mgmt_interface="bond0.100")
    f = facts30(cni=broken, daemonset=ds(r"interface=^bond0\.100$"))
    plan = s30.plan(f, s, sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["PinAutodetect", "WaitPods"]
    fixed = s30.set_autodetect_method(broken, plan.actions[0].method)
    assert s30.autodetect_method(fixed) == r"interface=^bond0\.100$"


def test_calico_multi_nic_without_default_route_asks_for_mgmt_interface():
    with pytest.raises(ConflictError, match=r"2 network interfaces \(eno1, ib0\) and no default route") as e:
        s30.plan(facts30(nics=NICS_IB, route="Iface\tDestination\n---\n"), Settings(), sf.CONTROL)
    assert "MGMT_INTERFACE" in e.value.hint


def test_calico_not_ready_node_waits_and_the_wait_names_node_and_status():
    f = facts30(pods=[pod("calico-node-aaaaa", "cp1"), pod("calico-node-bbbbb", "w1", False, "ImagePullBackOff")],
                node_list=("cp1", "w1", "w2"))
    plan = s30.plan(f, Settings(), sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["WaitPods"]
    problems = M.not_ready_pods(f["pods"], f["nodes"], "calico-node-", per_node=True)
    assert problems == ["w1: calico-node-bbbbb calico-node: ImagePullBackOff", "w2: no calico-node pod"]


class _FakeKubectl:
    """Answers `microk8s kubectl get ... -o json` from fixed objects (the API server cannot run here)."""

    name = "cp1"

    def __init__(self, objects: dict):
        self.objects = objects
        self.calls = 0

    def run(self, argv, **kw):
        import json

        from provision.hosts.base import Result

        self.calls += 1
        kind = argv[3]
        return Result(tuple(argv), 0, json.dumps(self.objects[kind]), "")


def test_wait_pods_times_out_with_node_and_pod_status():
    from provision.errors import VerifyFailed
    from provision.stage import ApplyContext

    host = _FakeKubectl({"pods": {"items": [pod("calico-node-bbbbb", "w1", False, "ErrImagePull")]},
                         "nodes": nodes("w1")})
    wait = M.WaitPods("kube-system", "calico-node-", True, 0.3, "calico-node", interval=0.1)
    with pytest.raises(VerifyFailed, match=r"calico-node not ready after 0s: w1: calico-node-bbbbb calico-node: "
                                           r"ErrImagePull"):
        wait.apply(host, ApplyContext(Settings()))
    assert 2 <= host.calls <= 10  # bounded


def test_wait_pods_returns_when_ready_and_rolled_out():
    from provision.stage import ApplyContext

    host = _FakeKubectl({"pods": {"items": [pod("calico-node-a", "cp1")]}, "nodes": nodes("cp1"),
                         "daemonset": ds()})
    M.WaitPods("kube-system", "calico-node-", True, 5, "calico-node", daemonset="calico-node").apply(
        host, ApplyContext(Settings()))
    assert host.calls == 3


def test_calico_image_missing_from_bundle_is_refused():
    cni = CNI_YAML.replace("calico/node:v3.25.1", "calico/node:v3.28.1")
    with pytest.raises(BundleError, match=r"docker.io/calico/node:v3.28.1"):
        s30.plan(facts30(cni=cni), Settings(), sf.CONTROL)


def test_calico_without_microk8s_cannot_plan():
    f = facts30()
    f["status"] = M.parse_installed(sf.raw("", 1))
    with pytest.raises(ConflictError, match="not installed"):
        s30.plan(f, Settings(), sf.CONTROL)


def test_calico_daemonset_missing_is_applied_from_cni_yaml():
    f = facts30(pods=[])
    f["calico_ds"] = None
    plan = s30.plan(f, Settings(), sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["KubectlFileApply", "WaitPods"]


# --------------------------------------------------------------------------------------------- stage 40

COREFILE = """.:53 {
    errors
    health {
      lameduck 5s
    }
    ready
    log . {
      class error
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    prometheus :9153
    forward . 8.8.8.8 8.8.4.4
    cache 30
    loop
    reload
    loadbalance
}
"""
RESOLV_STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lab.example\n"
RESOLV_SITE = "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"


def cm(corefile: str = COREFILE) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system",
                         "labels": {"addonmanager.kubernetes.io/mode": "EnsureExists", "k8s-app": "kube-dns"}},
            "data": {"Corefile": corefile}}


def facts40(corefile: str | None = COREFILE, etc: str = RESOLV_STUB, systemd: str = RESOLV_SITE,
            node_list: tuple = ("cp1",), pv=None, pvc=None, shared_path: dict | None = None,
            pods: tuple = ("coredns-7d9f-x", "hostpath-provisioner-5c-y")) -> sf.StrictFacts:
    f = sf.StrictFacts({
        "status": M.parse_installed(sf.raw("/snap/bin/microk8s\n")),
        "resolv": s40.parse_resolv(sf.raw(etc + "---\n" + systemd)),
        "coredns_cm": cm(corefile) if corefile is not None else None,
        "pods": {"items": [pod(name, "cp1") for name in pods]},
        "nodes": nodes(*node_list),
        "pv": pv,
        "pvc": pvc,
    })
    if shared_path is not None:
        f["shared_path"] = shared_path
    return f


def test_dns_replaces_the_public_fallback_with_the_node_resolvers():
    plan = s40.plan(facts40(), Settings(), sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["KubectlApply", "WaitPods"]
    doc = yaml.safe_load(plan.actions[0].manifest)
    assert "forward . 10.0.0.2 10.0.0.3\n" in doc["data"]["Corefile"]
    assert doc["metadata"]["labels"]["k8s-app"] == "kube-dns"
    _validate(doc)


def test_dns_settings_win_and_converged_plans_nothing():
    s = Settings(dns_servers_csv=("10.9.9.9",))
    plan = s40.plan(facts40(), s, sf.CONTROL)
    assert "forward . 10.9.9.9\n" in yaml.safe_load(plan.actions[0].manifest)["data"]["Corefile"]
    done = facts40(corefile=COREFILE.replace("8.8.8.8 8.8.4.4", "10.9.9.9"))
    assert s40.plan(done, s, sf.CONTROL).empty
    assert all(c.ok for c in s40.verify(done, s, sf.CONTROL))


def test_verify_fails_on_a_public_forward_the_settings_do_not_name():
    """MicroK8s' own dns enable forwards to 8.8.8.8 8.8.4.4 (microk8s.md §6): with DNS_SERVERS_CSV set to site
    servers that Corefile must not pass verify; a public resolver the user listed does."""
    check = next(c for c in s40.verify(facts40(), Settings(dns_servers_csv=("10.9.9.9",)), sf.CONTROL)
                 if c.name == "CoreDNS upstream is not a public resolver")
    assert not check.ok and check.detail == "forwards to 8.8.8.8 8.8.4.4"
    listed = Settings(dns_servers_csv=("8.8.8.8", "8.8.4.4"))
    assert all(c.ok for c in s40.verify(facts40(), listed, sf.CONTROL) if c.name.startswith("CoreDNS upstream"))


def test_dns_refuses_when_only_loopback_or_public_resolvers_exist():
    with pytest.raises(ConflictError, match=r"no site DNS server.*127.0.0.53, 8.8.8.8") as e:
        s40.plan(facts40(systemd="nameserver 8.8.8.8\n"), Settings(), sf.CONTROL)
    assert "DNS_SERVERS_CSV=" in e.value.hint


def test_dns_addon_disabled_is_enabled_with_servers():
    plan = s40.plan(facts40(corefile=None, pods=("hostpath-provisioner-5c-y",)), Settings(), sf.CONTROL)
    assert plan.actions[0] == s40.EnableDns(("10.0.0.2", "10.0.0.3"))


class _DnsNode:
    """`microk8s enable dns:...` and `kubectl get/apply` of the CoreDNS ConfigMap on a node where MicroK8s'
    cluster agent enabled dns (forwarding to 8.8.8.8) just before: enable only says "already enabled"."""

    name = "cp1"

    def __init__(self, corefile: str):
        self.corefile, self.calls = corefile, []

    def run(self, argv, stdin=None, **kw):
        import json

        from provision.hosts.base import Result

        self.calls.append(tuple(argv[:3]))
        out = ""
        if argv[:2] == ["microk8s", "enable"]:
            out = "Infer repository core for addon dns\nAddon core/dns is already enabled\n"
        elif argv[:3] == ["microk8s", "kubectl", "get"]:
            out = json.dumps(cm(self.corefile))
        elif argv[:3] == ["microk8s", "kubectl", "apply"]:
            self.corefile = yaml.safe_load(stdin)["data"]["Corefile"]
        return Result(tuple(argv), 0, out, "")


@pytest.mark.parametrize("agent_first", [True, False])
def test_enable_dns_fixes_the_forward_when_the_cluster_agent_enabled_dns_first(agent_first):
    """MicroK8s' cluster agent enables dns asynchronously (launch configuration, microk8s.md §6): when it lands
    between gather and apply, `enable dns:SERVERS` changes nothing and the Corefile still says 8.8.8.8."""
    from provision.stage import ApplyContext

    host = _DnsNode(COREFILE if agent_first else COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3"))
    s40.EnableDns(("10.0.0.2", "10.0.0.3")).apply(host, ApplyContext(Settings()))
    assert s40.corefile_upstreams(host.corefile) == ["10.0.0.2", "10.0.0.3"]
    assert (("microk8s", "kubectl", "apply") in host.calls) is agent_first


def test_corefile_forward_with_options_block_keeps_the_block():
    text = "    forward . 8.8.8.8 {\n      max_concurrent 1000\n    }\n"
    assert s40.set_corefile_upstreams(text, ["10.0.0.2"]) == "    forward . 10.0.0.2 {\n      max_concurrent 1000\n    }\n"
    assert s40.corefile_upstreams(text) == ["8.8.8.8"]


def test_single_node_without_hostpath_storage_enables_it():
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    plan = s40.plan(facts40(corefile=done, pods=("coredns-7d9f-x",)), Settings(), sf.CONTROL)
    assert [a.argv if isinstance(a, RunCommand) else type(a).__name__ for a in plan.actions] == [
        ("microk8s", "enable", "hostpath-storage", "--reclaim-policy=Retain"), "WaitPods"]


def test_multi_node_without_shared_storage_is_refused():
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    with pytest.raises(ConflictError, match="3 nodes but SHARED_STORAGE_ENABLED=false"):
        s40.plan(facts40(corefile=done, node_list=("cp1", "w1", "w2")), Settings(), sf.CONTROL)


def test_multi_node_hostpath_on_local_disk_is_refused():
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    s = Settings(shared_storage_enabled=True, shared_storage_path="/srv/homes")
    with pytest.raises(ConflictError, match="local ext2/ext3 filesystem"):
        s40.plan(facts40(corefile=done, node_list=("cp1", "w1"), shared_path={"exists": True, "fstype": "ext2/ext3"}),
                 s, sf.CONTROL)
    with pytest.raises(ConflictError, match="does not exist"):
        s40.plan(facts40(corefile=done, shared_path={"exists": False, "fstype": ""}), s, sf.CONTROL)


def test_shared_storage_pv_pvc_created_then_converged():
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    s = Settings(shared_storage_enabled=True, shared_storage_path="/mnt/cephfs/jhub", pvc_size="2Ti")
    f = facts40(corefile=done, node_list=("cp1", "w1"), shared_path={"exists": True, "fstype": "ceph"})
    plan = s40.plan(f, s, sf.CONTROL)
    assert [type(a).__name__ for a in plan.actions] == ["KubectlApply"]
    docs = list(yaml.safe_load_all(plan.actions[0].manifest))
    assert [d["kind"] for d in docs] == ["Namespace", "PersistentVolume", "PersistentVolumeClaim"]
    assert docs[1]["spec"]["hostPath"] == {"path": "/mnt/cephfs/jhub", "type": "Directory"}
    assert docs[2]["metadata"]["namespace"] == "jhub" and docs[2]["spec"]["volumeName"] == "jhub-homes"
    for d in docs:
        _validate(d)
    pv, pvc = copy.deepcopy(docs[1]), copy.deepcopy(docs[2])
    pvc["status"] = {"phase": "Bound"}
    converged = facts40(corefile=done, node_list=("cp1", "w1"), pv=pv, pvc=pvc,
                        shared_path={"exists": True, "fstype": "ceph"})
    assert s40.plan(converged, s, sf.CONTROL).empty
    assert all(c.ok for c in s40.verify(converged, s, sf.CONTROL) if not c.warning)


def test_nfs_pv_and_a_moved_path_is_refused():
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    s = Settings(shared_storage_enabled=True, shared_storage_type="nfs", nfs_server="nfs.lab.example",
                 shared_storage_path="/export/jhub")
    docs = s40.shared_storage_docs(s)
    assert docs[1]["spec"]["nfs"] == {"server": "nfs.lab.example", "path": "/export/jhub"}
    for d in docs:
        _validate(d)
    old = copy.deepcopy(docs[1])
    old["spec"]["nfs"]["path"] = "/export/old"
    with pytest.raises(ConflictError, match="would move every user's home"):
        s40.plan(facts40(corefile=done, pv=old, pvc=docs[2]), s, sf.CONTROL)


def _validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.30.0", strict=True)


def _shared_state(size: str, pv_size: str | None = None):
    """A converged shared-storage cluster whose claim requests `size` (and its PV has `pv_size`)."""
    done = COREFILE.replace("8.8.8.8 8.8.4.4", "10.0.0.2 10.0.0.3")
    base = Settings(shared_storage_enabled=True, shared_storage_path="/mnt/cephfs/jhub", pvc_size=size)
    docs = s40.shared_storage_docs(base)
    pv, pvc = copy.deepcopy(docs[1]), copy.deepcopy(docs[2])
    pv["spec"]["capacity"]["storage"] = pv_size or size
    pvc["status"] = {"phase": "Bound", "capacity": {"storage": size}}
    return facts40(corefile=done, node_list=("cp1", "w1"), pv=pv, pvc=pvc,
                   shared_path={"exists": True, "fstype": "ceph"})


@pytest.mark.parametrize("new, why", [
    ("4Ti", ("Kubernetes resizes only claims whose StorageClass allows volume expansion, and this one is bound "
            "to a static PersistentVolume")),
    ("1Ti", "Kubernetes never shrinks a claim"),
])
def test_pvc_size_change_is_refused_before_any_change(new, why):
    """Defect 13: the API would take the PV's new capacity and refuse the claim's; never half-apply."""
    s = Settings(shared_storage_enabled=True, shared_storage_path="/mnt/cephfs/jhub", pvc_size=new)
    with pytest.raises(ConflictError) as e:
        s40.plan(_shared_state("2Ti"), s, sf.CONTROL)
    assert e.value.message == (f"PVC_SIZE={new} but the claim jhub/jhub-homes requests 2Ti; {why}, so nothing was "
                               "changed")
    assert e.value.hint.startswith("set PVC_SIZE=2Ti in jhub.env again (the space users get is the free space of "
                                   "/mnt/cephfs/jhub, not PVC_SIZE)")
    assert "microk8s kubectl delete pvc -n jhub jhub-homes" in e.value.hint


def test_half_applied_resize_is_not_reported_as_converged():
    """The state the old stage 40 left (PV at the new size, claim refused): still refused, not success."""
    s = Settings(shared_storage_enabled=True, shared_storage_path="/mnt/cephfs/jhub", pvc_size="4Ti")
    with pytest.raises(ConflictError, match="requests 2Ti"):
        s40.plan(_shared_state("2Ti", pv_size="4Ti"), s, sf.CONTROL)


def test_pv_capacity_alone_is_resized_and_equal_quantities_are_equal():
    s = Settings(shared_storage_enabled=True, shared_storage_path="/mnt/cephfs/jhub", pvc_size="2Ti")
    plan = s40.plan(_shared_state("2Ti", pv_size="1Ti"), s, sf.CONTROL)  # only the PV differs: editable
    assert [type(a).__name__ for a in plan.actions] == ["KubectlApply"]
    assert s40.plan(_shared_state("2048Gi"), s, sf.CONTROL).empty  # the API may write 2Ti as 2048Gi

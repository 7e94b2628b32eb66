"""The Network Operator in the sim (network-operator.md §1): the NicClusterPolicy controller runs once the operator
pod runs, reconciles only `nic-cluster-policy` (ConfigMap rdma-devices verbatim, DaemonSet rdma-shared-dp-ds on the
Mellanox nodes), marks any other policy `ignore`; NFD labels pci-15b3 as each real NFD would; the plugin advertises
rdmaHcaMax only on a node where it runs and one of whose devices matches the selectors. In-process store, real CRD."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.harness.bundle import reference_charts
from tests.harness.sim import addons
from tests.harness.sim.controllers import Cluster
from tests.harness.sim.nodes import register_node
from tests.harness.sim.spec import IB_DEVICE
from tests.harness.sim.store import Store
from tests.sim.test_api import CORE, facts

NS = "nvidia-network-operator"
OPERATOR = "nvcr.io/nvidia/cloud-native/network-operator:v25.7.0"
PLUGIN = "nvcr.io/nvidia/mellanox/k8s-rdma-shared-dev-plugin:network-operator-v25.7.0"
GPU_NFD = "registry.k8s.io/nfd/node-feature-discovery:v0.18.2"
NET_NFD = "nvcr.io/nvidia/mellanox/node-feature-discovery:network-operator-v25.7.0"
RES = "rdma/rdma_shared_device_a"
CONFIG = json.dumps({"configList": [{"resourcePrefix": "rdma", "resourceName": "rdma_shared_device_a",
                                     "rdmaHcaMax": 63, "selectors": {"vendors": ["15b3"],
                                                                     "linkTypes": ["infiniband"]}}]}, indent=2)


def crds(name: str) -> list[dict]:
    charts = reference_charts()
    if charts is None:
        pytest.skip("shared/reference/charts (the real network-operator chart and its CRDs) not found")
    import tarfile
    with tarfile.open(charts / "network-operator-25.7.0.tgz") as tar:
        return [d for d in yaml.safe_load_all(tar.extractfile(f"network-operator/{name}").read()) if d]


@pytest.fixture
def sim(tmp_path):
    store = Store(tmp_path / "store.json")
    for ns in ("default", "kube-system", "gpu-operator", NS):
        store.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for name, ip in (("cp", "10.99.0.1"), ("ib1", "10.99.0.2"), ("roce1", "10.99.0.3")):
        register_node(store, name, ip, worker=name != "cp")
    for obj in addons.calico():
        store.create(store.kind(obj["kind"], obj["apiVersion"]), "kube-system", obj)
    for crd in crds("crds/mellanox.com_nicclusterpolicies.yaml") + crds(
            "charts/node-feature-discovery/crds/nfd-api-crds.yaml"):
        store.create(store.kind("CustomResourceDefinition", "apiextensions.k8s.io/v1"), "", crd)
    images = CORE + [OPERATOR, PLUGIN, GPU_NFD, NET_NFD]
    roce = dict(IB_DEVICE, ifName="ens1f0", linkType="ether", deviceID="1017", **{"class": "0x020000"})
    node_facts = {"10.99.0.1": facts(images), "10.99.0.2": dict(facts(images), rdma=[dict(IB_DEVICE)]),
                  "10.99.0.3": dict(facts(images), rdma=[roce])}
    cluster = Cluster(store)
    cluster.kubelet_status = lambda ip: node_facts.get(ip)
    cluster.create = lambda kind, api, ns, obj: store.create(store.kind(kind, api), ns, obj)
    return cluster


def reconcile(cluster: Cluster, n: int = 4) -> None:
    for _ in range(n):
        cluster.reconcile()


def deployment(name: str, image: str, ns: str = NS) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": image}]}}}}


def daemonset(name: str, image: str, ns: str) -> dict:
    d = deployment(name, image, ns)
    d["kind"] = "DaemonSet"
    del d["spec"]["replicas"]
    d["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}]
    return d


def policy(name: str = "nic-cluster-policy", config: str = CONFIG) -> dict:
    return {"apiVersion": "mellanox.com/v1alpha1", "kind": "NicClusterPolicy", "metadata": {"name": name},
            "spec": {"rdmaSharedDevicePlugin": {"image": "k8s-rdma-shared-dev-plugin",
                                                "repository": "nvcr.io/nvidia/mellanox",
                                                "version": "network-operator-v25.7.0", "config": config}}}


def node(cluster: Cluster, name: str) -> dict:
    return cluster.store.find(cluster.store.kind("Node"), "", name)


def test_policy_becomes_configmap_and_daemonset_on_ib_nodes_only_once_the_operator_runs(sim):
    sim.create("DaemonSet", "apps/v1", "gpu-operator", daemonset("gpu-operator-node-feature-discovery-worker",
                                                                  GPU_NFD, "gpu-operator"))
    sim.create("NicClusterPolicy", "mellanox.com/v1alpha1", "", policy())
    sim.create("NicClusterPolicy", "mellanox.com/v1alpha1", "", policy("mine"))
    reconcile(sim)
    store = sim.store
    assert store.find(store.kind("ConfigMap"), NS, "rdma-devices") is None   # no operator pod yet
    sim.create("Deployment", "apps/v1", NS, deployment("network-operator", OPERATOR))
    reconcile(sim, 6)
    cm = store.find(store.kind("ConfigMap"), NS, "rdma-devices")
    assert cm["data"] == {"config.json": CONFIG}   # verbatim
    ds = store.find(store.kind("DaemonSet", "apps/v1"), NS, "rdma-shared-dp-ds")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"feature.node.kubernetes.io/pci-15b3.present": "true"}
    # the GPU Operator's NFD labels both Mellanox nodes (PCI class 02xx with the vendor label)
    labelled = {n for n in ("cp", "ib1", "roce1")
                if node(sim, n)["metadata"]["labels"].get("feature.node.kubernetes.io/pci-15b3.present") == "true"}
    assert labelled == {"ib1", "roce1"}
    plugin_nodes = {p["spec"]["nodeName"] for p in sim.pods(NS) if p["metadata"]["name"].startswith("rdma-shared-dp-ds")}
    assert plugin_nodes == {"ib1", "roce1"}
    # the IB port matches the selectors; the RoCE port (link type ether) does not; no plugin on cp
    assert node(sim, "ib1")["status"]["allocatable"][RES] == "63"
    assert node(sim, "roce1")["status"]["allocatable"][RES] == "0"
    assert RES not in node(sim, "cp")["status"]["allocatable"]
    other = store.find(store.kind("NicClusterPolicy", "mellanox.com/v1alpha1"), "", "mine")
    assert other["status"] == {"state": "ignore", "reason": "Unsupported NicClusterPolicy instance mine. Only "
                               "instance with name nic-cluster-policy is supported"}
    # a changed config reaches the ConfigMap and the resource
    ncp = store.find(store.kind("NicClusterPolicy", "mellanox.com/v1alpha1"), "", "nic-cluster-policy")
    ncp["spec"]["rdmaSharedDevicePlugin"]["config"] = CONFIG.replace('"infiniband"', '"ether"')
    store.put_internal(ncp)
    reconcile(sim, 4)
    assert node(sim, "ib1")["status"]["allocatable"][RES] == "0" and \
        node(sim, "roce1")["status"]["allocatable"][RES] == "63"


def test_the_network_operators_nfd_labels_mellanox_nodes_only_through_its_node_feature_rule(sim):
    sim.create("DaemonSet", "apps/v1", NS, daemonset("network-operator-node-feature-discovery-worker", NET_NFD, NS))
    reconcile(sim)
    assert "feature.node.kubernetes.io/pci-15b3.present" not in node(sim, "ib1")["metadata"]["labels"]
    rule = {"apiVersion": "nfd.k8s-sigs.io/v1alpha1", "kind": "NodeFeatureRule",   # templates/nodefeaturerules.yaml
            "metadata": {"name": "nvidia-nics-rules"},
            "spec": {"rules": [{"name": "Nvidia NICs PCI", "labels": {"pci-15b3.present": "true"},
                                "matchFeatures": [{"feature": "pci.device", "matchExpressions": {
                                    "vendor": {"op": "In", "value": ["15b3"]},
                                    "class": {"op": "In", "value": ["0200", "0207"]}}}]}]}}
    sim.create("NodeFeatureRule", "nfd.k8s-sigs.io/v1alpha1", "", rule)
    reconcile(sim)
    assert node(sim, "ib1")["metadata"]["labels"]["feature.node.kubernetes.io/pci-15b3.present"] == "true"
    assert "feature.node.kubernetes.io/pci-15b3.present" not in node(sim, "cp")["metadata"]["labels"]


def test_a_config_without_rdma_hca_max_advertises_nothing(sim):
    sim.create("DaemonSet", "apps/v1", "gpu-operator", daemonset("nfd-worker", GPU_NFD, "gpu-operator"))
    sim.create("Deployment", "apps/v1", NS, deployment("network-operator", OPERATOR))
    bad = json.loads(CONFIG)
    del bad["configList"][0]["rdmaHcaMax"]
    sim.create("NicClusterPolicy", "mellanox.com/v1alpha1", "", policy(config=json.dumps(bad)))
    reconcile(sim, 6)
    assert any(p["metadata"]["name"].startswith("rdma-shared-dp-ds") for p in sim.pods(NS))
    assert RES not in node(sim, "ib1")["status"]["allocatable"]


def test_the_policy_stage_50_applies_passes_the_real_crd(sim):
    """Stage 50's NicClusterPolicy against the chart's own CRD schema (an unknown field would be refused)."""
    from provision.config import Settings
    from stages import _network_operator as N
    from tests.harness.sim.store import ApiError

    settings = Settings(enable_ib=True)
    chart = N.open_network_chart(reference_charts() / "network-operator-25.7.0.tgz")
    obj = sim.create("NicClusterPolicy", "mellanox.com/v1alpha1", "", N.policy(chart, settings))
    assert obj["spec"]["rdmaSharedDevicePlugin"]["config"] == N.plugin_config(settings)
    bad = N.policy(chart, settings)
    bad["metadata"]["name"] = "typo"
    bad["spec"]["rdmaSharedDevicePlugin"]["configuration"] = "{}"
    with pytest.raises(ApiError):
        sim.create("NicClusterPolicy", "mellanox.com/v1alpha1", "", bad)


def test_ib_option_gives_the_named_node_its_hca():
    from tests.harness.sim.spec import SimSpec, host_config

    spec = SimSpec(ib={"node2"})
    assert host_config(spec, "h2", 2, "10.0.0.3", "python3")["rdma"] == [IB_DEVICE]
    assert host_config(spec, "h1", 1, "10.0.0.2", "python3")["rdma"] == []

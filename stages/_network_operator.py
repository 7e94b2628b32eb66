"""NVIDIA Network Operator on MicroK8s, offline, for InfiniBand (shared/reference/network-operator.md).

The chart from the bundle, then the one NicClusterPolicy the operator reconciles (`nic-cluster-policy`) with
only the RDMA shared device plugin: the hosts carry MLNX_OFED/DOCA themselves, so no `ofedDriver`. Pure parts
(values, images, the policy, fact parsers, the plan) and the action that waits for `rdma/...` allocatable on
every InfiniBand node. The stage (s50_accelerators.py) wires them; facts live under its key `ib`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import BundleError, ConflictError, ProvisionError, VerifyFailed
from provision.stage import Action, ApplyContext, Check, Plan
from stages._microk8s import KubectlApply, kube_get, pod_problem, pod_ready, poll_until, to_yaml

RELEASE = "network-operator"
NAMESPACE = "nvidia-network-operator"  # the MicroK8s nvidia addon's namespace for this chart
POLICY = "nic-cluster-policy"  # the only NicClusterPolicy the operator reconciles (consts.go)
POLICY_RESOURCE = "nicclusterpolicies.mellanox.com"
IB_LABEL = "feature.node.kubernetes.io/pci-15b3.present"  # NFD: a Mellanox (vendor 15b3) NIC; the plugin's selector
PLUGIN_POD = "rdma-shared-dp-ds"
MANAGED_BY = {"app.kubernetes.io/managed-by": "provision"}
# How many pods may share a node's HCAs through the one resource: the reference's example value. Each user pod
# asks for IB_RESOURCE_COUNT of them, so a node serves 63 // IB_RESOURCE_COUNT IB pods.
RDMA_HCA_MAX = 63
# IB ports only: the Mellanox vendor and the netdev's link type `infiniband` (IPoIB; `ether` would be RoCE).
# No ifNames: this stage runs on the control node and cannot know every node's port names faithfully.
SELECTORS = {"vendors": ["15b3"], "linkTypes": ["infiniband"]}
PLUGIN_REPOSITORY, PLUGIN_IMAGE = "nvcr.io/nvidia/mellanox", "k8s-rdma-shared-dev-plugin"
EVERY_NODE = ("control-plane", "worker")


def release_values(nfd: bool) -> dict[str, Any]:
    """Only one NFD in a cluster (the chart README: pass nfd.enabled=false when NFD is already deployed). With
    USE_GPU_OPERATOR=true the GPU Operator's NFD serves both: its worker whitelists PCI classes 02/0200/0207 with
    the vendor label, so it writes pci-15b3.present itself; then this chart deploys neither NFD nor its
    NodeFeatureRule (whose CRD only its own NFD would bring). Without the GPU Operator this chart's NFD and
    NodeFeatureRule `nvidia-nics-rules` label the Mellanox nodes."""
    return {"nfd": {"enabled": nfd, "deployNodeFeatureRules": nfd}}


def wants_own_nfd(settings: Any, nfd_pods: Any) -> bool:
    """This chart's NFD only without the GPU Operator and when no other NFD runs already."""
    return not settings.use_gpu_operator and not any(
        (p.get("metadata") or {}).get("namespace") != NAMESPACE for p in (nfd_pods or {}).get("items") or [])


# ---------------------------------------------------------------------------------------------
# The chart, the policy and their images (pure)


@dataclass(frozen=True)
class NetworkChart:
    path: str
    version: str
    app_version: str
    values: Mapping[str, Any]


def open_network_chart(path: Any) -> NetworkChart:
    from provision.jupyterhub.chart import open_chart

    chart = open_chart(path)
    if chart.name != "network-operator":
        raise BundleError(f"{path}: chart is {chart.name!r}, expected 'network-operator'",
                          "put NVIDIA's chart (helm pull nvidia/network-operator --version X) in the bundle's charts/")
    return NetworkChart(str(path), chart.version, chart.app_version, chart.values)


def plugin_image(chart: NetworkChart) -> dict[str, str]:
    """The RDMA shared device plugin's ImageSpec: the images of a Network Operator release are tagged
    network-operator-<appVersion> (reference §2: network-operator-v25.7.0 for chart 25.7.0)."""
    return {"image": PLUGIN_IMAGE, "repository": PLUGIN_REPOSITORY, "version": f"network-operator-{chart.app_version}"}


def resource_parts(name: str) -> tuple[str, str]:
    """`rdma/rdma_shared_device_a` -> ("rdma", "rdma_shared_device_a"): the plugin's resourcePrefix and resourceName."""
    prefix, _, res = name.partition("/")
    return prefix, res


def plugin_config(settings: Any) -> str:
    """The plugin's config.json (copied verbatim into ConfigMap rdma-devices): one resource, every IB port."""
    prefix, name = resource_parts(settings.ib_resource_name)
    return json.dumps({"configList": [{"resourcePrefix": prefix, "resourceName": name, "rdmaHcaMax": RDMA_HCA_MAX,
                                       "selectors": SELECTORS}]}, indent=2)


def policy(chart: NetworkChart, settings: Any) -> dict[str, Any]:
    """The NicClusterPolicy: only `rdmaSharedDevicePlugin` (host OFED/DOCA, so no ofedDriver)."""
    return {"apiVersion": "mellanox.com/v1alpha1", "kind": "NicClusterPolicy",
            "metadata": {"name": POLICY, "labels": dict(MANAGED_BY)},
            "spec": {"rdmaSharedDevicePlugin": {**plugin_image(chart), "config": plugin_config(settings)}}}


def needed_images(chart: NetworkChart, nfd: bool) -> list[tuple[str, str]]:
    """(ref, component) for the operator (its Deployment and hook Jobs), this chart's NFD when on, and the plugin."""
    v = chart.values
    op = v.get("operator") or {}
    out = [(f"{op.get('repository')}/{op.get('image')}:{op.get('tag') or chart.app_version}", "operator")]
    if nfd:
        img = (v.get("node-feature-discovery") or {}).get("image") or {}
        out.append((f"{img.get('repository')}:{img.get('tag') or chart.app_version}", "node-feature-discovery"))
    p = plugin_image(chart)
    out.append((f"{p['repository']}/{p['image']}:{p['version']}", "rdma shared device plugin"))
    return out


def bundle_problems(manifest: Any, chart: NetworkChart, nfd: bool) -> list[str]:
    """Every image the Network Operator will run that the bundle lacks or does not put on every node (the
    bundle has no InfiniBand role, and the operator, NFD and the plugin may each run on any node)."""
    from provision.images import normalize_ref

    problems = []
    for ref, comp in needed_images(chart, nfd):
        img = manifest.image(ref)
        if img is None:
            problems.append(f"image {normalize_ref(ref)} (Network Operator {comp}) is not in the bundle")
        elif not set(EVERY_NODE) <= set(img.roles):
            problems.append(f"image {img.ref} (Network Operator {comp}) is not marked for role(s) "
                            f"{', '.join(sorted(set(EVERY_NODE) - set(img.roles)))} in manifest.yaml")
    return problems


BUNDLE_HINT = ("put the missing image tarballs in the bundle's images/ with the default roles control-plane,worker "
               "(`provision bundle manifest --bundle DIR`), then `provision bundle verify`, then re-run")


def check_bundle(bundle_dir: Any, settings: Any, nfd: bool) -> NetworkChart:
    """The bundled chart; BundleError naming each missing image before anything changes."""
    from provision.bundle import load_manifest
    from provision.jupyterhub.chart import find_chart

    if bundle_dir is None:
        raise BundleError("no offline bundle given", "pass --bundle DIR (the offline-images directory)")
    chart = open_network_chart(find_chart(bundle_dir, "network-operator"))
    problems = bundle_problems(load_manifest(bundle_dir), chart, nfd)
    if problems:
        raise BundleError("; ".join(problems), BUNDLE_HINT)
    return chart


# ---------------------------------------------------------------------------------------------
# Facts


def probes() -> list[F.Probe]:
    """The part's own probes (the stage adds `nodes` and `nfd_pods`, shared with the GPU part)."""
    from stages._helm import DIGEST_PY, parse_digest, parse_json, parse_release

    q = F.quoted
    pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
    return [
        F.Probe("ib_release", pre + q("timeout 60 microk8s helm3 list -n {ns} --all -o json", ns=NAMESPACE),
                lambda raw: parse_release(raw, RELEASE)),
        F.Probe("ib_deployed_digest", pre + q("timeout 60 microk8s helm3 get values {r} -n {ns} -o json 2>/dev/null"
                                              " | python3 -c {py}", r=RELEASE, ns=NAMESPACE, py=DIGEST_PY),
                parse_digest),
        F.Probe("ib_policy", pre + q("timeout 60 microk8s kubectl get {k} {n} -o json 2>/dev/null",
                                     k=POLICY_RESOURCE, n=POLICY), parse_json),
    ]


def ib_nodes(nodes: Any, resource: str) -> dict[str, int]:
    """{node: allocatable `resource`} for each node NFD labelled as having a Mellanox NIC."""
    out = {}
    for n in (nodes or {}).get("items") or []:
        if ((n.get("metadata") or {}).get("labels") or {}).get(IB_LABEL) != "true":
            continue
        alloc = str(((n.get("status") or {}).get("allocatable") or {}).get(resource, "0"))
        out[n["metadata"]["name"]] = int(alloc) if alloc.isdigit() else 0
    return out


def rdma_ready(nodes: Mapping[str, int]) -> bool:
    return bool(nodes) and all(v >= RDMA_HCA_MAX for v in nodes.values())


def gather(raw: Mapping[str, Any], settings: Any, bundle_dir: Any) -> dict[str, Any]:
    """The part's facts from one round trip's results (`raw`) and the bundle (checked before anything changes)."""
    nfd = wants_own_nfd(settings, raw["nfd_pods"])
    chart = check_bundle(bundle_dir, settings, nfd)
    return {"chart": chart, "nfd": nfd, "release": raw["ib_release"], "deployed_digest": raw["ib_deployed_digest"],
            "policy": raw["ib_policy"], "nodes": ib_nodes(raw["nodes"], settings.ib_resource_name)}


# ---------------------------------------------------------------------------------------------
# Plan (pure)


def release_change(release: Any, chart: NetworkChart, digest: str, deployed: Any) -> str:
    """Why the release must be installed or upgraded ('' when it is current); refuses what is not ours."""
    if release == "error":
        raise ProvisionError("`microk8s helm3 list` failed on the control node",
                             "check `microk8s status` and that stages 10-40 completed, then re-run")
    if release is None:
        return "not installed"
    if release["chart_name"] and release["chart_name"] != "network-operator":
        raise ConflictError(f"release {RELEASE} in {NAMESPACE} is chart {release['chart_name']}, not network-operator",
                            f"it is not ours: remove it (`microk8s helm3 uninstall {RELEASE} -n {NAMESPACE}`)")
    if release["status"].startswith("pending"):
        raise ConflictError(f"release {RELEASE} is stuck in {release['status']} (an earlier helm run was interrupted)",
                            f"run `microk8s helm3 rollback {RELEASE} -n {NAMESPACE}` (or `uninstall` when it was "
                            "never deployed), then re-run provision")
    if release["chart_version"].lstrip("v") != chart.version.lstrip("v"):
        return f"chart {release['chart_version']} -> {chart.version}"
    if deployed != digest:
        return "values changed"
    return "" if release["status"] == "deployed" else f"release is {release['status']}"


def policy_current(live: Any, want: Mapping[str, Any]) -> bool:
    """The live policy is ours and carries our plugin section unchanged; a policy someone else made is refused."""
    if not isinstance(live, dict):
        return False
    labels = (live.get("metadata") or {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in MANAGED_BY.items()):
        raise ConflictError(f"NicClusterPolicy {POLICY} exists and was not made by provision",
                            f"it is not ours: keep it and set ENABLE_IB=false, or remove it (`microk8s kubectl "
                            f"delete {POLICY_RESOURCE} {POLICY}`) and re-run")
    have = (live.get("spec") or {}).get("rdmaSharedDevicePlugin") or {}
    return all(have.get(k) == v for k, v in want["spec"]["rdmaSharedDevicePlugin"].items())


def plan(facts: Mapping[str, Any], settings: Any, helm_action: Any) -> Plan:
    """Install or upgrade the release when chart or values differ, apply the NicClusterPolicy when it differs, and
    wait for `rdma/...` on every IB node when anything changed or a node lacks it."""
    from provision.jupyterhub.values import to_yaml as values_yaml
    from provision.jupyterhub.values import values_digest

    chart = facts["chart"]
    values = release_values(facts["nfd"])
    digest = values_digest(values)
    actions: list[Action] = []
    if release_change(facts["release"], chart, digest, facts["deployed_digest"]):
        actions.append(helm_action(RELEASE, NAMESPACE, chart.path, chart.version,
                                   values_yaml(values, quote_all=True).encode(), digest, int(settings.wait_timeout)))
    want = policy(chart, settings)
    if not policy_current(facts["policy"], want):  # after the release: its CRD must exist first
        actions.append(KubectlApply(to_yaml(want), f"NicClusterPolicy {POLICY} (RDMA shared device plugin, "
                                    f"{settings.ib_resource_name} x{RDMA_HCA_MAX} per node)"))
    if actions or not rdma_ready(facts["nodes"]):
        actions.append(WaitRdma(settings.ib_resource_name, float(settings.wait_timeout)))
    if not actions:
        return Plan.noop(f"Network Operator {chart.version} with these values; NicClusterPolicy {POLICY}; "
                         f"{settings.ib_resource_name} allocatable on {len(facts['nodes'])} InfiniBand node(s)")
    return Plan.of(*actions)


def verify(facts: Mapping[str, Any], settings: Any) -> list[Check]:
    """The release, the policy, and the resource on each IB node."""
    release = facts["release"]
    ok = isinstance(release, dict) and release.get("status") == "deployed"
    checks = [Check("network operator", ok, f"{RELEASE}: " + (f"{release['status']}, chart {release['chart_version']}"
                                                             if isinstance(release, dict) else "missing"),
                    f"microk8s helm3 status {RELEASE} -n {NAMESPACE}")]
    checks.append(Check("nic cluster policy", isinstance(facts["policy"], dict),
                        f"NicClusterPolicy {POLICY}: " + ("present" if isinstance(facts["policy"], dict) else "missing"),
                        "provision install --only 50"))
    if not facts["nodes"]:
        checks.append(Check("ib nodes", False, f"no node is labelled {IB_LABEL}=true",
                            f"microk8s kubectl -n {NAMESPACE} get pods -o wide"))
    for name, alloc in sorted(facts["nodes"].items()):
        checks.append(Check(f"ib {name}", alloc >= RDMA_HCA_MAX, f"{name}: {alloc} {settings.ib_resource_name} "
                            "allocatable", f"microk8s kubectl -n {NAMESPACE} get pods -o wide"))
    return checks


# ---------------------------------------------------------------------------------------------
# Waiting for the RDMA resource


def node_problem(node: str, pods: Any, log_of: Any = None) -> str:
    """Why an IB node lacks the resource: its plugin pod's state and last log line, or that it has none."""
    for p in (pods or {}).get("items") or []:
        if (p.get("spec") or {}).get("nodeName") == node and str(p["metadata"]["name"]).startswith(PLUGIN_POD):
            name = p["metadata"]["name"]
            last = (log_of(name) if log_of else "") or ""
            state = pod_problem(p) if not pod_ready(p) else "running"
            return f"{name} {state}" + (f"; its log: {last[-300:]}" if last else "")
    return f"no {PLUGIN_POD} pod on it"


def failure(nodes: Mapping[str, int], pods: Any, resource: str, timeout: float, log_of: Any = None) -> VerifyFailed:
    if not nodes:
        return VerifyFailed(f"no node was labelled as an InfiniBand node within {timeout:.0f}s ({IB_LABEL}, "
                            "written by node-feature-discovery for a Mellanox PCI device)",
                            "see `microk8s kubectl get pods -A -o wide | grep -e nfd -e node-feature` (the NFD "
                            "worker must run on every node; ImagePullBackOff means its image is missing there: re-run "
                            "stage 20); raise WAIT_TIMEOUT on slow nodes; then re-run")
    lines = [f"{n}: {a} {resource} allocatable ({node_problem(n, pods, log_of)})"
             for n, a in sorted(nodes.items()) if a < RDMA_HCA_MAX]
    return VerifyFailed(f"{resource} not allocatable after {timeout:.0f}s: " + "; ".join(lines),
                        f"see `microk8s kubectl -n {NAMESPACE} logs <pod>` for the pod named; the plugin offers only "
                        "InfiniBand ports (Mellanox, link/infiniband): on that node the host's MLNX_OFED/DOCA driver "
                        "must be loaded and `ip -o link` must show the port as link/infiniband (a RoCE/Ethernet port "
                        "does not count); ImagePullBackOff means the plugin image is missing there (re-run stage 20); "
                        "raise WAIT_TIMEOUT on slow nodes; then re-run `provision install --only 50`")


@dataclass(frozen=True)
class WaitRdma(Action):
    """Wait until every IB node (NFD's pci-15b3 label) has the RDMA resource allocatable (bounded)."""

    waits_only = True

    resource: str
    timeout: float
    interval: float = 3.0

    def describe(self) -> str:
        return f"wait up to {self.timeout:.0f}s until every InfiniBand node has {self.resource} allocatable"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        from stages._gpu_operator import WaitGpus, last_log_line

        nodes: dict[str, int] = {}

        def ready() -> bool:
            nonlocal nodes
            raw = kube_get(host, "nodes")
            if raw is None:
                return False
            nodes = ib_nodes(raw, self.resource)
            return rdma_ready(nodes) and WaitGpus._nfd_done(host)

        if poll_until(ctx, self.timeout, self.interval, self.resource, ready):
            return
        raise failure(nodes, kube_get(host, "pods", "-n", NAMESPACE), self.resource, self.timeout,
                      lambda pod: last_log_line(host, pod, NAMESPACE))

"""NVIDIA GPU Operator on MicroK8s, offline, from the bundled chart (shared/reference/gpu-operator.md).

Pure parts (values, the images the chart and its ClusterPolicy operands use, fact parsers, the plan) and
the one action that waits for `nvidia.com/gpu` to become allocatable. The stage (s50_accelerators.py)
wires them; Ascend and InfiniBand get their own helper modules beside this one.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import BundleError, ConflictError, ProvisionError, VerifyFailed
from provision.stage import Action, ApplyContext, Plan
from stages._microk8s import KubectlApply, kube_get, pod_problem, pod_ready, poll_until, to_yaml

RELEASE = NAMESPACE = "gpu-operator"
# The driver branches each chart release ships and supports (gpu-operator.md §2: 25.10.0 with 580.95.05, 570.195.03,
# 535.274.02). A host driver older than the oldest of them is outside what NVIDIA tested with that release.
DRIVER_BRANCHES = {"v25.10.0": (535, 570, 580)}
RUNTIME_CLASS = "nvidia"  # operator.runtimeClass default: the containerd handler the toolkit adds
GPU = "nvidia.com/gpu"
NFD_GPU_LABEL = "feature.node.kubernetes.io/pci-10de.present"  # NFD: a PCI device of vendor NVIDIA
GPU_COUNT_LABEL = "nvidia.com/gpu.count"  # GPU feature discovery: GPUs NVML sees (what nvidia-smi -L lists)
# MicroK8s regenerates containerd.toml from the template on each containerd start: the toolkit must edit
# the template, signal MicroK8s' own socket and read the effective config from the rendered file.
CONTAINERD_TEMPLATE = "/var/snap/microk8s/current/args/containerd-template.toml"
CONTAINERD_SOCKET = "/var/snap/microk8s/common/run/containerd.sock"
CONTAINERD_TOML = "/var/snap/microk8s/current/args/containerd.toml"
TOOLKIT_POD = "nvidia-container-toolkit-daemonset"
DEVICE_PLUGIN_POD = "nvidia-device-plugin-daemonset"
# (values key, where it runs) for the images the chart's objects and the ClusterPolicy's operands use.
# "cluster": the operator Deployment, its CRD hook Job and NFD (master, gc, and the worker DaemonSet on every
# node) may run on any node; "gpu": the operands only run on GPU nodes.
COMPONENTS = (("operator", "cluster"), ("validator", "gpu"), ("toolkit", "gpu"), ("devicePlugin", "gpu"),
              ("gfd", "gpu"), ("dcgmExporter", "gpu"), ("migManager", "gpu"), ("nodeStatusExporter", "gpu"),
              ("dcgm", "gpu"), ("driver", "gpu"))
EVERY_NODE = ("control-plane", "worker")


def release_values(nfd: bool = True) -> dict[str, Any]:
    """MicroK8s' values (gpu-operator.md §1): host driver, toolkit on MicroK8s' containerd paths, NFD once."""
    return {
        "driver": {"enabled": False},  # host driver (preflight: nvidia-smi -L works on every GPU node)
        "toolkit": {"enabled": True, "env": [
            {"name": "CONTAINERD_CONFIG", "value": CONTAINERD_TEMPLATE},
            {"name": "CONTAINERD_SOCKET", "value": CONTAINERD_SOCKET},
            {"name": "RUNTIME_CONFIG_SOURCE", "value": f"file={CONTAINERD_TOML}"}]},
        "operator": {"defaultRuntime": "containerd"},  # what the MicroK8s addon passes; ignored by 25.10
        "nfd": {"enabled": nfd},
    }


# ---------------------------------------------------------------------------------------------
# The chart and its images (pure over the archive's Chart.yaml/values.yaml files)


@dataclass(frozen=True)
class OperatorChart:
    path: str
    version: str
    app_version: str
    values: Mapping[str, Any]
    nfd_image: str  # the node-feature-discovery subchart's image


def open_operator_chart(path: str | Path) -> OperatorChart:
    """The gpu-operator chart's version, default values and its NFD subchart's image, read from the .tgz."""
    import yaml

    from provision.jupyterhub.chart import open_chart

    chart = open_chart(path)
    if chart.name != "gpu-operator":
        raise BundleError(f"{path}: chart is {chart.name!r}, expected 'gpu-operator'",
                          "put NVIDIA's chart (helm pull nvidia/gpu-operator --version vX) in the bundle's charts/")
    nfd = ""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {m.name: m for m in tar.getmembers() if m.isfile()}
            sub = "gpu-operator/charts/node-feature-discovery/"
            if sub + "Chart.yaml" in names:
                meta = yaml.safe_load(tar.extractfile(names[sub + "Chart.yaml"]).read()) or {}  # type: ignore[union-attr]
                vals = yaml.safe_load(tar.extractfile(names[sub + "values.yaml"]).read()) or {}  # type: ignore[union-attr]
                img = vals.get("image") or {}
                nfd = f"{img.get('repository')}:{img.get('tag') or meta.get('appVersion')}"
    except (tarfile.TarError, OSError, KeyError, AttributeError) as e:
        raise BundleError(f"{path}: cannot read the node-feature-discovery subchart: {e}",
                          "re-copy the chart from the bundle") from None
    return OperatorChart(str(path), chart.version, chart.app_version, chart.values, nfd)


def merged(defaults: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def image_ref(comp: Mapping[str, Any], app_version: str) -> str:
    version = str(comp.get("version") or app_version)
    repo, image = comp.get("repository"), comp["image"]
    name = f"{repo}/{image}" if repo else str(image)
    return f"{name}@{version}" if version.startswith("sha256:") else f"{name}:{version}"


def needed_images(chart: OperatorChart, values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(ref, 'cluster'|'gpu', component) for every image the release and its enabled operands use."""
    v = merged(chart.values, values)
    out: list[tuple[str, str, str]] = []
    for key, where in COMPONENTS:
        comp = v.get(key) or {}
        if not comp.get("image") or comp.get("enabled") is False \
                or (key in ("nodeStatusExporter", "dcgm", "driver") and not comp.get("enabled")):
            continue
        out.append((image_ref(comp, chart.app_version), where, key))
    if (v.get("nfd") or {}).get("enabled", True) and chart.nfd_image:
        out.append((chart.nfd_image, "cluster", "node-feature-discovery"))
    return out


def bundle_problems(manifest: Any, chart: OperatorChart, values: Mapping[str, Any]) -> list[str]:
    """Every image the GPU Operator will run that the bundle lacks or does not mark for the nodes running it."""
    from provision.images import normalize_ref

    problems = []
    for ref, where, comp in needed_images(chart, values):
        img = manifest.image(ref)
        roles = set(EVERY_NODE) if where == "cluster" else {"gpu"}
        if img is None:
            problems.append(f"image {normalize_ref(ref)} (GPU Operator {comp}) is not in the bundle")
        elif not roles <= set(img.roles) and not (where == "gpu" and set(EVERY_NODE) <= set(img.roles)):
            problems.append(f"image {img.ref} (GPU Operator {comp}) is not marked for role(s) "
                            f"{', '.join(sorted(roles - set(img.roles)))} in manifest.yaml")
    return problems


BUNDLE_HINT = ("put the missing image tarballs in the bundle's images/ and run `provision bundle manifest --bundle DIR "
               "--roles images/OPERANDS.tar=gpu` (the operator and node-feature-discovery images keep the default "
               "roles control-plane,worker: they run on any node), then `provision bundle verify`, then re-run")


def check_bundle(bundle_dir: Any, settings: Any) -> tuple[OperatorChart, Any]:
    """The bundled chart and manifest; BundleError naming each missing image before anything changes."""
    from provision.bundle import load_manifest
    from provision.jupyterhub.chart import find_chart

    if bundle_dir is None:
        raise BundleError("no offline bundle given", "pass --bundle DIR (the offline-images directory)")
    chart = open_operator_chart(find_chart(bundle_dir, "gpu-operator", settings.gpu_operator_version))
    manifest = load_manifest(bundle_dir)
    problems = bundle_problems(manifest, chart, release_values())
    if problems:
        raise BundleError("; ".join(problems), BUNDLE_HINT)
    return chart, manifest


# ---------------------------------------------------------------------------------------------
# Facts (pure parsers)


def gpu_nodes(nodes: Any) -> dict[str, dict[str, Any]]:
    """{node: {"count": GPUs GFD counted (None before it ran), "allocatable": nvidia.com/gpu}} for each node
    NFD or the operator marked as having an NVIDIA GPU."""
    out = {}
    for n in (nodes or {}).get("items") or []:
        labels = (n.get("metadata") or {}).get("labels") or {}
        if labels.get(NFD_GPU_LABEL) != "true" and labels.get("nvidia.com/gpu.present") != "true":
            continue
        alloc = ((n.get("status") or {}).get("allocatable") or {}).get(GPU, "0")
        count = labels.get(GPU_COUNT_LABEL)
        out[n["metadata"]["name"]] = {"count": int(count) if str(count or "").isdigit() else None,
                                      "allocatable": int(str(alloc)) if str(alloc).isdigit() else 0}
    return out


def gpus_ready(nodes: Mapping[str, Mapping[str, Any]]) -> bool:
    return bool(nodes) and all(g["count"] and g["allocatable"] == g["count"] for g in nodes.values())


def nfd_elsewhere(pods: Any) -> bool:
    """node-feature-discovery (pods labelled app.kubernetes.io/name=node-feature-discovery) already runs outside
    our namespace: do not install a second one (two NFD masters fight over the same node labels)."""
    # The Network Operator's NFD (ENABLE_IB) is not counted: it yields to this one when USE_GPU_OPERATOR=true
    # (stages/_network_operator.py), so counting it would leave the cluster with no NFD at all.
    return any((p.get("metadata") or {}).get("namespace") not in (NAMESPACE, "nvidia-network-operator")
               for p in (pods or {}).get("items") or [])


# ---------------------------------------------------------------------------------------------
# Plan (pure)


def plan(facts: Mapping[str, Any], settings: Any, helm_action: Any) -> Plan:
    """Install or upgrade the release when its chart or values differ, add the RuntimeClass when missing,
    and wait for the GPUs when anything changed or they are not all allocatable."""
    from provision.jupyterhub.values import to_yaml as values_yaml
    from provision.jupyterhub.values import values_digest

    chart = facts["chart"]
    values = release_values(nfd=not facts.get("nfd_elsewhere"))
    digest = values_digest(values)
    release = facts["release"]
    if release == "error":
        raise ProvisionError("`microk8s helm3 list` failed on the control node",
                             "check `microk8s status` and that stages 10-40 completed, then re-run")
    why = ""
    if release is not None:
        if release["chart_name"] and release["chart_name"] != "gpu-operator":
            raise ConflictError(f"release {RELEASE} in {NAMESPACE} is chart {release['chart_name']}, not gpu-operator",
                                f"it is not ours: remove it (`microk8s helm3 uninstall {RELEASE} -n {NAMESPACE}`)")
        if release["status"].startswith("pending"):
            raise ConflictError(f"release {RELEASE} is stuck in {release['status']} (an earlier helm run was "
                                "interrupted)", f"run `microk8s helm3 rollback {RELEASE} -n {NAMESPACE}` (or "
                                f"`uninstall` when it was never deployed), then re-run provision")
    if release is None:
        why = "not installed"
    elif release["chart_version"].lstrip("v") != chart.version.lstrip("v"):
        why = f"chart {release['chart_version']} -> {chart.version}"
    elif facts["deployed_digest"] != digest:
        why = "values changed"
    elif release["status"] != "deployed":
        why = f"release is {release['status']}"
    actions: list[Action] = []
    if why:
        actions.append(helm_action(RELEASE, NAMESPACE, chart.path, chart.version,
                                   values_yaml(values, quote_all=True).encode(), digest, int(settings.wait_timeout)))
    if facts.get("runtime_class") != "nvidia":
        actions.append(KubectlApply(to_yaml({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                                             "metadata": {"name": RUNTIME_CLASS}, "handler": "nvidia"}),
                                    f"RuntimeClass {RUNTIME_CLASS} (handler nvidia)"))
    if actions or not gpus_ready(facts["gpus"]):
        actions.append(WaitGpus(float(settings.wait_timeout)))
    if not actions:
        total = sum(g["allocatable"] for g in facts["gpus"].values())
        return Plan.noop(f"GPU Operator {chart.version} with these values; {total} nvidia.com/gpu allocatable "
                         f"on {len(facts['gpus'])} node(s)")
    return Plan.of(*actions)


# ---------------------------------------------------------------------------------------------
# Waiting for the GPUs


def last_log_line(host: Any, pod: str, namespace: str = NAMESPACE) -> str:
    """The last line a pod logged (`kubectl logs --tail 1`), or '' when there is none."""
    from provision.errors import CommandTimeout
    from stages._microk8s import kubectl

    try:
        r = host.run(list(kubectl("logs", "-n", namespace, pod, "--tail", "1")), sudo=True, timeout=60, check=False)
    except CommandTimeout:
        return ""
    return (r.stdout.strip().splitlines() or [""])[-1] if r.exit_status == 0 else ""


def node_problem(node: str, pods: Any, log_of: Any = None) -> str:
    """Why a GPU node has no allocatable GPUs: the first not-ready operand pod there (toolkit first), with the
    last line of its log when log_of(pod name) gives one."""
    mine = [p for p in (pods or {}).get("items") or [] if (p.get("spec") or {}).get("nodeName") == node]
    order = (TOOLKIT_POD, DEVICE_PLUGIN_POD, "nvidia-operator-validator")
    for prefix in order:
        for p in mine:
            if str(p["metadata"]["name"]).startswith(prefix) and not pod_ready(p):
                name = p["metadata"]["name"]
                last = (log_of(name) if log_of else "") or ""
                return f"{name} {pod_problem(p)}" + (f"; its log: {last[-300:]}" if last else "")
    for prefix in order:
        if not any(str(p["metadata"]["name"]).startswith(prefix) for p in mine):
            return f"no {prefix} pod yet"
    return "operand pods ready, device plugin not registered yet"


def failure(gpus: Mapping[str, Mapping[str, Any]], pods: Any, timeout: float, log_of: Any = None) -> VerifyFailed:
    if not gpus:
        return VerifyFailed(f"no node was labelled as a GPU node within {timeout:.0f}s (node-feature-discovery "
                            f"label {NFD_GPU_LABEL})",
                            f"see `microk8s kubectl -n {NAMESPACE} get pods -o wide` (the nfd-worker pods and the "
                            "operator must run; ImagePullBackOff means an image is missing on that node: re-run "
                            "stage 20); raise WAIT_TIMEOUT on slow nodes; then re-run")
    lines, toolkit = [], False
    for name, g in sorted(gpus.items()):
        if g["count"] and g["allocatable"] == g["count"]:
            continue
        why = node_problem(name, pods, log_of)
        toolkit = toolkit or why.startswith(TOOLKIT_POD)
        have = f"{g['allocatable']} of {g['count']}" if g["count"] else f"{g['allocatable']}"
        lines.append(f"{name}: {have} nvidia.com/gpu allocatable ({why})")
    hint = (f"see `microk8s kubectl -n {NAMESPACE} logs <pod>` for the pod named; ")
    if toolkit:
        hint += ("the NVIDIA container toolkit could not add the nvidia runtime to MicroK8s' containerd: it must be "
                 f"able to write {CONTAINERD_TEMPLATE} and reach {CONTAINERD_SOCKET} on that node (a read-only or "
                 "hand-managed template stops it); fix that, then re-run `provision install --only 50`")
    else:
        hint += "ImagePullBackOff means an image is missing on that node (re-run stage 20); raise WAIT_TIMEOUT on " \
                "slow nodes; then re-run"
    return VerifyFailed(f"GPUs not allocatable after {timeout:.0f}s: " + "; ".join(lines), hint)


@dataclass(frozen=True)
class WaitGpus(Action):
    """Wait until every GPU node's `nvidia.com/gpu` allocatable equals the GPUs on it (bounded)."""

    waits_only = True

    timeout: float
    interval: float = 3.0

    def describe(self) -> str:
        return f"wait up to {self.timeout:.0f}s until every GPU node has all its GPUs allocatable (nvidia.com/gpu)"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        gpus: dict[str, dict[str, Any]] = {}

        def ready() -> bool:
            nonlocal gpus
            nodes = kube_get(host, "nodes")
            if nodes is None:
                return False
            gpus = gpu_nodes(nodes)
            return gpus_ready(gpus) and self._nfd_done(host)

        if poll_until(ctx, self.timeout, self.interval, "the GPUs", ready):
            return
        raise failure(gpus, kube_get(host, "pods", "-n", NAMESPACE), self.timeout, lambda pod: last_log_line(host, pod))

    @staticmethod
    def _nfd_done(host: Any) -> bool:
        """NFD has looked at every node (its worker DaemonSet is rolled out), so no GPU node is still unlabelled."""
        from stages._microk8s import daemonset_rolled_out

        dss = kube_get(host, "daemonsets", "-A") or {}
        nfd = [d for d in dss.get("items") or [] if re.search(r"nfd-worker$|node-feature-discovery-worker$",
                                                                d["metadata"]["name"])]
        return bool(nfd) and all(daemonset_rolled_out(d) for d in nfd)

"""Huawei Ascend NPUs on MicroK8s, offline (shared/reference/ascend.md).

Node side (stage 10, per NPU node): the Ascend Docker Runtime wired into MicroK8s' containerd template and the
device plugin's log directory. Cluster side (stage 50, facts under `npu`): the `accelerator` label on every NPU
node, the device plugin DaemonSet (bundled image, `imagePullPolicy: Never`) and a bounded wait until each NPU
node has all its NPUs allocatable. Pure parts (template edit, manifest, parsers, plan) and the one wait action.

Which nodes are NPU nodes: the run's nodes preflight found NPUs on (npu-smi, /dev/davinci*; the runner hands
them to every stage in its context), plus nodes that already carry our label (an earlier run labelled them).
How many NPUs a node has: the capacity the device plugin registers, which counts every chip the driver's DCMI
lists (what npu-smi lists; unhealthy chips stay in capacity and leave allocatable), so "all allocatable" is
allocatable == capacity > 0. Stage 60 compares that with `npu-smi info` run inside a pod.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import BundleError, ConflictError, VerifyFailed
from provision.stage import Action, ApplyContext, Plan, Role, RunCommand
from stages import _microk8s as M
from stages._microk8s import KubectlApply, kube_get, kube_probe, kubectl, pod_problem, pod_ready, to_yaml

# Where the Ascend Docker Runtime installer puts the runtime (mind-cluster component/ascend-docker-runtime).
RUNTIME_BIN = "/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime"
RUNTIME_NAME = "ascend"
LOG_DIR = "/var/log/mindx-dl/devicePlugin"  # the plugin's hostPath of type Directory: must exist first
DRIVER_DIR = "/usr/local/Ascend/driver"
NAMESPACE = "kube-system"
DAEMONSET = "ascend-device-plugin-daemonset"
POD_LABEL = "ascend-device-plugin-ds"
LABEL_KEY = "accelerator"
DIGEST_ANNOTATION = "provision.io/spec-sha256"
IMAGE_HINTS = ("ascend-k8sdeviceplugin", "ascend-device-plugin")
INSTALL_HINT = ("install the Ascend Docker Runtime on this node: `./Ascend-docker-runtime_VERSION_linux-ARCH.run "
                f"--install --install-scene=containerd` (it installs {RUNTIME_BIN}; do not point it at "
                "/etc/containerd/config.toml: provision wires it into MicroK8s' containerd template), then re-run")


def names(settings: Any) -> tuple[str, str]:
    """(extended resource, `accelerator` label value) for NPU_RESOURCE_NAME (ascend.md §1)."""
    from provision.jupyterhub.values import NPU_RESOURCES

    return NPU_RESOURCES[settings.npu_resource_name]


# ---------------------------------------------------------------------------------------------
# containerd template (stage 10, pure)
#
# What the installer does for --install-scene=containerd (mind-cluster component/ascend-docker-runtime/install/
# process/containerd_process.go, addRuntime; constant.go): it adds runtime `ascend` under the CRI plugin's
# containerd.runtimes, copying runc's options (runtime_type io.containerd.runc.v2), with options.BinaryName = the
# runtime, and sets containerd's default_runtime_name = "ascend" — so every container, the device plugin's too,
# goes through it and gets ASCEND_DOCKER_RUNTIME=True (ascend.md §3). We make the same edit in MicroK8s' template
# (containerd.toml is regenerated from it at each start; microk8s.md §7), leaving everything else as it is.

_CRI = 'plugins."io.containerd.grpc.v1.cri".containerd'
_DEFAULT_RE = re.compile(r'^(?P<indent>[ \t]*)default_runtime_name[ \t]*=[ \t]*"(?P<value>[^"]*)"', re.MULTILINE)
_HEADER_RE = re.compile(r"^[ \t]*\[")
_RUNC = f"[{_CRI}.runtimes.runc]"
_ASCEND = f"[{_CRI}.runtimes.{RUNTIME_NAME}"


def runtime_block(binary: str, indent: str) -> list[str]:
    return [f"{indent}[{_CRI}.runtimes.{RUNTIME_NAME}]",
            f'{indent}  runtime_type = "io.containerd.runc.v2"',
            "",
            f"{indent}  [{_CRI}.runtimes.{RUNTIME_NAME}.options]",
            f'{indent}    BinaryName = "{binary}"',
            ""]


def set_ascend_runtime(text: str, binary: str = RUNTIME_BIN) -> str:
    """The template with runtime `ascend` (BinaryName = the Ascend runtime) as containerd's default runtime.
    Idempotent; any earlier `ascend` tables are replaced; the rest of the file (sandbox_image, ...) untouched."""
    if not _DEFAULT_RE.search(text):
        raise ConflictError(f"{M.TEMPLATE} has no default_runtime_name line",
                            "this MicroK8s' containerd template is not the one provision knows (microk8s.md §7); "
                            "restore it from /snap/microk8s/current/default-args/containerd-template.toml")
    lines = text.splitlines()
    kept, skipping = [], False
    for ln in lines:
        if _HEADER_RE.match(ln):
            skipping = ln.strip().startswith(_ASCEND + "]") or ln.strip().startswith(_ASCEND + ".")
        if not skipping:
            kept.append(ln)
    at = next((i for i, ln in enumerate(kept) if ln.strip() == _RUNC), None)
    if at is None:
        raise ConflictError(f"{M.TEMPLATE} declares no runc runtime ({_RUNC})",
                            "restore MicroK8s' template from /snap/microk8s/current/default-args/"
                            "containerd-template.toml, then re-run")
    indent = kept[at][:len(kept[at]) - len(kept[at].lstrip())]
    kept[at:at] = runtime_block(binary, indent)
    out = "\n".join(kept) + ("\n" if text.endswith("\n") else "")
    return _DEFAULT_RE.sub(lambda m: f'{m.group("indent")}default_runtime_name = "{RUNTIME_NAME}"', out, count=1)


def runtime_configured(text: str | None, binary: str = RUNTIME_BIN) -> bool:
    """containerd's config (the template, or containerd.toml rendered from it) runs every container through
    the Ascend runtime."""
    if text is None:
        return False
    m = _DEFAULT_RE.search(text)
    return bool(m) and m.group("value") == RUNTIME_NAME and f'BinaryName = "{binary}"' in text \
        and f"[{_CRI}.runtimes.{RUNTIME_NAME}.options]" in text


# ---------------------------------------------------------------------------------------------
# The device plugin (stage 50, pure)


BUNDLE_HINT = ("save Huawei's ascend-k8sdeviceplugin image (the version matching your Ascend driver) into the "
               "bundle's images/, run `provision bundle manifest --bundle DIR --roles images/ASCEND.tar=npu`, then "
               "`provision bundle verify` and re-run")


def bundle_problems(manifest: Any) -> list[str]:
    """What the bundle lacks for the device plugin on the NPU nodes (preflight and stage 50 ask)."""
    found = [i for i in manifest.images if any(h in i.ref for h in IMAGE_HINTS)]
    if any("npu" in i.roles for i in found):
        return []
    if found:
        return [f"image {found[0].ref} (Ascend device plugin) is not marked for role npu in manifest.yaml"]
    return ["the bundle has no Ascend device plugin image (ascend-k8sdeviceplugin)"]


def plugin_image(manifest: Any) -> str:
    """The Ascend device plugin image the bundle carries for NPU nodes; BundleError before anything changes."""
    problems = bundle_problems(manifest)
    if problems:
        raise BundleError(problems[0], BUNDLE_HINT)
    return next(i.ref for i in manifest.images if any(h in i.ref for h in IMAGE_HINTS) and "npu" in i.roles)


def daemonset(image: str, resource: str, label: str) -> dict[str, Any]:
    """Huawei's DaemonSet (ascend.md §3; Ascend/ascend-device-plugin build/ascendplugin-910.yaml) for MicroK8s:
    image preloaded (Never pull), on the labelled nodes, privileged with the host's PIDs, kubelet sockets, the
    driver read-only and the log directory. No -useAscendDocker flag (deprecated): the plugin detects the
    runtime from ASCEND_DOCKER_RUNTIME=True, which the Ascend runtime (containerd's default) injects."""
    def host(name: str, path: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "hostPath": {"path": path, **extra}}

    spec = {
        "selector": {"matchLabels": {"name": POD_LABEL}},
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": {"name": POD_LABEL}},
            "spec": {
                "nodeSelector": {LABEL_KEY: label},
                "hostPID": True,
                "priorityClassName": "system-node-critical",
                "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                {"key": resource, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{
                    "name": "device-plugin-01",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/bash", "-c", "--"],
                    "args": [f"device-plugin -volcanoType=false -logFile={LOG_DIR}/devicePlugin.log -logLevel=0"],
                    "securityContext": {"privileged": True, "readOnlyRootFilesystem": True},
                    "resources": {"requests": {"cpu": "500m", "memory": "500Mi"},
                                  "limits": {"cpu": "500m", "memory": "500Mi"}},
                    "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    "volumeMounts": [
                        {"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"},
                        {"name": "pod-resource", "mountPath": "/var/lib/kubelet/pod-resources"},
                        {"name": "hiai-driver", "mountPath": DRIVER_DIR, "readOnly": True},
                        {"name": "log-path", "mountPath": LOG_DIR},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }],
                "volumes": [
                    host("device-plugin", "/var/lib/kubelet/device-plugins"),
                    host("pod-resource", "/var/lib/kubelet/pod-resources"),
                    host("hiai-driver", DRIVER_DIR),
                    host("log-path", LOG_DIR, type="Directory"),
                    host("tmp", "/tmp"),
                ],
            },
        },
    }
    digest = hashlib.sha256(repr(sorted_items(spec)).encode()).hexdigest()[:16]
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": DAEMONSET, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by":
                                                                               "provision"},
                         "annotations": {DIGEST_ANNOTATION: digest}},
            "spec": spec}


def sorted_items(x: Any) -> Any:
    if isinstance(x, Mapping):
        return [(k, sorted_items(x[k])) for k in sorted(x)]
    if isinstance(x, list):
        return [sorted_items(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# Facts (stage 50)


def probes() -> list[F.Probe]:
    """`nodes` (shared with the other parts: the first part asking runs it) and the plugin's DaemonSet."""
    return [kube_probe("nodes", "nodes"), kube_probe("npu_plugin", "daemonset", "-n", NAMESPACE, DAEMONSET)]


def check_bundle(bundle_dir: Any) -> str:
    """The device plugin image the bundle carries, checked before anything changes."""
    from provision.bundle import load_manifest

    if bundle_dir is None:
        raise BundleError("no offline bundle given", "pass --bundle DIR (the offline-images directory)")
    return plugin_image(load_manifest(bundle_dir))


def _ids(node: Mapping[str, Any]) -> set[str]:
    """What identifies a Kubernetes node for the run's nodes: its name and its addresses (a node reached over SSH
    is named by its address in the run)."""
    addrs = {str(a.get("address", "")) for a in (node.get("status") or {}).get("addresses") or []}
    return {str((node.get("metadata") or {}).get("name", "")).lower()} | addrs


def npu_nodes(nodes: Any, wanted: Any, resource: str, label: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({node: {"label": its accelerator label or None, "capacity": n, "allocatable": n}}, run nodes not found)
    for the Kubernetes nodes that are NPU nodes: found by preflight in this run (`wanted`: (name, address) pairs)
    or labelled by an earlier run."""
    out, found = {}, set()
    for n in (nodes or {}).get("items") or []:
        meta = n.get("metadata") or {}
        name, labels = str(meta.get("name", "")), meta.get("labels") or {}
        mine = [w for w in wanted if {w[0].lower(), w[1]} & _ids(n)]
        found.update(mine)
        if not mine and labels.get(LABEL_KEY) != label:
            continue
        st = n.get("status") or {}
        out[name] = {"label": labels.get(LABEL_KEY), "capacity": _count(st.get("capacity"), resource),
                     "allocatable": _count(st.get("allocatable"), resource)}
    return out, sorted(w[0] for w in set(wanted) - found)


def _count(resources: Any, key: str) -> int:
    v = str((resources or {}).get(key, "0"))
    return int(v) if v.isdigit() else 0


def gather(raw: Mapping[str, Any], settings: Any, image: str, run_nodes: Any) -> dict[str, Any]:
    """The `npu` facts of stage 50 from its probes' results and the run's nodes (with preflight's roles)."""
    resource, label = names(settings)
    wanted = {(n.name, n.address) for n in run_nodes or () if Role.NPU in n.roles}
    ds, api = raw.get("npu_plugin"), raw.get("nodes")
    nodes, missing = npu_nodes(api, wanted, resource, label)
    return {"enabled": True, "resource": resource, "label": label, "image": image,
            "api": api is not None, "nodes": nodes, "missing": missing if api is not None else [],
            "plugin_digest": (((ds or {}).get("metadata") or {}).get("annotations") or {}).get(DIGEST_ANNOTATION)}


def npus_ready(nodes: Mapping[str, Mapping[str, Any]]) -> bool:
    return bool(nodes) and all(n["capacity"] and n["allocatable"] == n["capacity"] for n in nodes.values())


# ---------------------------------------------------------------------------------------------
# Plan (pure)


def plan(facts: Mapping[str, Any], settings: Any) -> Plan:
    """Label the NPU nodes, apply the plugin DaemonSet when it differs, wait until every NPU is allocatable."""
    from provision.errors import ProvisionError

    if not facts.get("api"):
        raise ProvisionError("`microk8s kubectl get nodes` failed on the control node",
                             "check `microk8s status` and that stages 10-40 completed, then re-run")
    label, resource = facts["label"], facts["resource"]
    nodes = facts["nodes"]
    if facts.get("missing"):
        raise ConflictError(f"NPU node(s) {', '.join(facts['missing'])} are not in the cluster",
                            "join them first (`provision node add ADDRESS`), or check `microk8s kubectl get nodes`")
    if not nodes:
        return Plan.noop("ENABLE_NPU=true but no NPU node in this run")
    actions: list[Action] = []
    for name, n in sorted(nodes.items()):
        if n["label"] not in (None, label):
            raise ConflictError(f"node {name} is labelled {LABEL_KEY}={n['label']}, the NPU profiles and the "
                                f"device plugin select {LABEL_KEY}={label} (NPU_RESOURCE_NAME)",
                                f"set NPU_RESOURCE_NAME to the node's NPU, or relabel it: `microk8s kubectl label "
                                f"node {name} {LABEL_KEY}={label} --overwrite`")
        if n["label"] is None:
            actions.append(RunCommand(kubectl("label", "node", name, f"{LABEL_KEY}={label}"),
                                      f"label {name} {LABEL_KEY}={label} (the device plugin and NPU profiles "
                                      "select it)"))
    ds = daemonset(facts["image"], resource, label)
    if facts.get("plugin_digest") != ds["metadata"]["annotations"][DIGEST_ANNOTATION]:
        actions.append(KubectlApply(to_yaml(ds), f"the Ascend device plugin DaemonSet ({facts['image']}, "
                                                 f"{NAMESPACE}/{DAEMONSET})"))
    if actions or not npus_ready(nodes):
        actions.append(WaitNpus(resource, tuple(sorted(nodes)), float(settings.wait_timeout)))
    if not actions:
        total = sum(n["allocatable"] for n in nodes.values())
        return Plan.noop(f"Ascend device plugin running; {total} {resource} allocatable on {len(nodes)} node(s)")
    return Plan.of(*actions)


def checks(facts: Mapping[str, Any]) -> list[Any]:
    from provision.stage import Check

    res = facts["resource"]
    out = []
    for name, n in sorted(facts["nodes"].items()):
        ok = bool(n["capacity"]) and n["allocatable"] == n["capacity"]
        out.append(Check(f"npus {name}", ok, f"{name}: {n['allocatable']}/{n['capacity'] or '?'} {res} allocatable",
                         f"microk8s kubectl -n {NAMESPACE} get pods -l name={POD_LABEL} -o wide"))
    return out


# ---------------------------------------------------------------------------------------------
# Waiting for the NPUs


def _last_log_line(host: Any, pod: str) -> str:
    from provision.errors import CommandTimeout

    try:
        r = host.run(list(kubectl("logs", "-n", NAMESPACE, pod, "--tail", "1")), sudo=True, timeout=60, check=False)
    except CommandTimeout:
        return ""
    return (r.stdout.strip().splitlines() or [""])[-1] if r.exit_status == 0 else ""


def _last_warning(events: Any, pod: str) -> str:
    warn = [e for e in (events or {}).get("items") or []
            if (e.get("involvedObject") or {}).get("name") == pod and e.get("type") == "Warning"]
    return str(warn[-1].get("message") or "") if warn else ""


def node_problem(node: str, pods: Any, events: Any, log_of: Any = None) -> tuple[str, str]:
    """(what is wrong on an NPU node, the fix) from its device plugin pod, its last warning event and log line."""
    mine = [p for p in (pods or {}).get("items") or [] if (p.get("spec") or {}).get("nodeName") == node]
    if not mine:
        fix = (f"the node must be Ready, schedulable and labelled {LABEL_KEY}=... (`microk8s kubectl describe node "
               f"{node}`); then re-run `provision install --only 50`")
        return "no device plugin pod there", fix
    p = mine[0]
    name = p["metadata"]["name"]
    if pod_ready(p):
        last = (log_of(name) if log_of else "") or ""
        fix = (f"check `npu-smi info` on {node} and {LOG_DIR}/devicePlugin.log there; {RUNTIME_BIN} must be "
               "containerd's default runtime (stage 10) and /var/lib/kubelet MicroK8s' link (preflight)")
        return f"{name} runs but registered no NPUs" + (f"; its log: {last[-300:]}" if last else ""), fix
    why = f"{name} {pod_problem(p)}"
    warning = _last_warning(events, name)
    last = (log_of(name) if log_of else "") or ""
    why += (f"; event: {warning[-300:]}" if warning else "") + (f"; its log: {last[-300:]}" if last else "")
    if "ErrImageNeverPull" in why:
        fix = ("the plugin image is not on that node (imagePullPolicy Never): re-run `provision install --only 20` "
               "(its bundle image must be marked for role npu), then `--only 50`")
    elif LOG_DIR in warning:
        fix = f"create {LOG_DIR} on {node}: re-run `provision install --only 10,50` (stage 10 creates it)"
    else:
        fix = f"see `microk8s kubectl -n {NAMESPACE} describe pod {name}`; raise WAIT_TIMEOUT on slow nodes; re-run"
    return why, fix


@dataclass(frozen=True)
class WaitNpus(Action):
    """Wait until every NPU node has capacity and all of it allocatable for the NPU resource (bounded)."""

    waits_only = True

    resource: str
    nodes: tuple[str, ...]
    timeout: float
    interval: float = 3.0

    def describe(self) -> str:
        return (f"wait up to {self.timeout:.0f}s until every NPU node ({', '.join(self.nodes)}) has all its NPUs "
                f"allocatable ({self.resource})")

    def state(self, nodes: Any) -> dict[str, dict[str, int]]:
        out = {}
        for n in (nodes or {}).get("items") or []:
            name = n["metadata"]["name"]
            if name in self.nodes:
                st = n.get("status") or {}
                out[name] = {"capacity": _count(st.get("capacity"), self.resource),
                             "allocatable": _count(st.get("allocatable"), self.resource)}
        return out

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        have: dict[str, dict[str, int]] = {}

        def ready() -> bool:
            nonlocal have
            nodes = kube_get(host, "nodes")
            if nodes is None:
                return False
            have = self.state(nodes)
            return len(have) == len(self.nodes) and npus_ready(have)

        if M.poll_until(ctx, self.timeout, self.interval, "the NPUs", ready):
            return
        pods = kube_get(host, "pods", "-n", NAMESPACE, "-l", f"name={POD_LABEL}")
        events = kube_get(host, "events", "-n", NAMESPACE)
        raise self.failure(have, pods, events, lambda pod: _last_log_line(host, pod))

    def failure(self, have: Mapping[str, Mapping[str, int]], pods: Any, events: Any, log_of: Any = None) -> VerifyFailed:
        lines, fixes = [], []
        for name in self.nodes:
            n = have.get(name, {"capacity": 0, "allocatable": 0})
            if n["capacity"] and n["allocatable"] == n["capacity"]:
                continue
            why, fix = node_problem(name, pods, events, log_of)
            lines.append(f"{name}: {n['allocatable']}/{n['capacity'] or '?'} {self.resource} allocatable ({why})")
            if fix not in fixes:
                fixes.append(fix)
        return VerifyFailed(f"NPUs not allocatable after {self.timeout:.0f}s: " + "; ".join(lines), "; ".join(fixes))

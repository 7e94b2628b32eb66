"""What the control plane and the kubelets would do, run as one reconcile pass over the store:
node status from each node's kubelet stand-in, workload controllers (Deployment -> ReplicaSet -> Pod,
DaemonSet, StatefulSet, Job), the scheduler (taints, selectors, resource fit), image checks against
the node's REAL containerd, PVC binding, device-plugin capacity and the GPU operator's operands.

Never kinder than the real thing: no image -> ErrImagePull/ImagePullBackOff (no registry in an air
gap), no sandbox image -> FailedCreatePodSandBox, `:latest` -> pull always -> fails offline, a node
without a running calico-node is NotReady, requests that do not fit -> Pending + FailedScheduling.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import urllib.request
from pathlib import Path

from . import smoke
from .runtime import process_backed
from .store import Store, now, pod_qos, selector_dict_match

CNI_IMAGE_HINT = "calico/node:"
TOOLKIT_IMAGE_HINT = "k8s/container-toolkit:"
NODE_MONITOR_GRACE = 40.0   # kube-controller-manager --node-monitor-grace-period (1.30 default)
DEVICE_PLUGINS = {"k8s-device-plugin:": "gpu", "ascend-k8sdeviceplugin": "npu",
                  "ascend-device-plugin": "npu", "k8s-rdma-shared-dev-plugin": "rdma"}
RDMA_NODE_LABEL = "feature.node.kubernetes.io/pci-15b3.present"   # NFD: a Mellanox NIC; the RDMA plugin's nodeSelector
NODE_ROLE_LABELS = {True: ("node.kubernetes.io/microk8s-worker", "microk8s-worker"),
                    False: ("node.kubernetes.io/microk8s-controlplane", "microk8s-controlplane")}


# ---- image refs ----------------------------------------------------------------------------------

def normalize_image(image: str) -> str:
    """`busybox:1.28.4` -> `docker.io/library/busybox:1.28.4`, no tag -> `:latest` (what CRI does)."""
    name, digest = (image.split("@", 1) + [""])[:2]
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    return name + ("@" + digest if digest else "")


def pull_policy(container: dict) -> str:
    if container.get("imagePullPolicy"):
        return container["imagePullPolicy"]
    image = container.get("image", "")
    tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    return "IfNotPresent" if tagged or "@" in image else "Always"


def image_present(image: str, images: list[dict]) -> bool:
    ref = normalize_image(image)
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return any(i["digest"] == digest and (i["ref"].rsplit(":", 1)[0] == name.rsplit(":", 1)[0]
                                              or i["ref"].startswith(name)) for i in images)
    return any(i["ref"] == ref for i in images)


# ---- quantities ----------------------------------------------------------------------------------

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(value) -> float:
    s = str(value)
    if s.endswith("m"):
        return float(s[:-1]) / 1000
    for suf in sorted(_SUFFIX, key=len, reverse=True):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * _SUFFIX[suf]
    return float(s)


def pod_requests(pod: dict) -> dict[str, float]:
    """Effective requests: containers summed, init containers maxed; limits stand in for missing requests."""
    def one(c):
        r = dict((c.get("resources") or {}).get("limits") or {})
        r.update((c.get("resources") or {}).get("requests") or {})
        return {k: quantity(v) for k, v in r.items()}
    total: dict[str, float] = {}
    for c in pod["spec"].get("containers", []):
        for k, v in one(c).items():
            total[k] = total.get(k, 0) + v
    for c in pod["spec"].get("initContainers") or []:
        for k, v in one(c).items():
            total[k] = max(total.get(k, 0), v)
    return total


# ---- the controller ------------------------------------------------------------------------------

class Cluster:
    """Owns the reconcile loop; `kubelet_status` is replaceable for tests."""

    def __init__(self, store: Store, certs_dir: str = ""):
        import os
        import secrets
        self.store = store
        self.certs_dir = certs_dir
        key = os.path.join(certs_dir, "ca.key") if certs_dir else ""
        # signs the pods' service-account tokens (a real cluster: certs/serviceaccount.key, JWTs)
        self._sa_key = Path(key).read_bytes() if key and os.path.exists(key) else secrets.token_bytes(32)
        self.kubelets: dict[str, dict | None] = {}
        self.last_reconcile = 0.0
        self._synced: dict[str, str] = {}   # node -> digest of the pod list its kubelet last accepted
        self._kubelet_seen: dict[str, tuple[float, dict]] = {}   # node IP -> (when, its last status)
        self._toolkit_results: dict[str, dict] = {}   # node -> what its container toolkit operand last did

    # service-account tokens: what a pod's kubelet mounts and the API server authenticates
    def sa_token(self, ns: str, sa: str, uid: str) -> str:
        import base64
        import hmac
        subject = base64.urlsafe_b64encode(f"system:serviceaccount:{ns}:{sa}:{uid}".encode()).decode()
        return f"sim-sa.{subject}.{hmac.new(self._sa_key, subject.encode(), 'sha256').hexdigest()}"

    def token_ok(self, authorization: str) -> bool:
        import hmac
        token = authorization[7:] if authorization.startswith("Bearer ") else ""
        parts = token.split(".")
        return len(parts) == 3 and parts[0] == "sim-sa" and hmac.compare_digest(
            parts[2], hmac.new(self._sa_key, parts[1].encode(), "sha256").hexdigest())

    # node facts
    def kubelet_status(self, ip: str) -> dict | None:
        """What the node's kubelet reports. A kubelet too busy to answer in time keeps its last status for the
        node controller's grace period (node-monitor-grace-period, 40 s in 1.30), as on a real cluster; one
        that refuses the connection (stopped) is gone at once (harsher than real, never kinder)."""
        try:
            with urllib.request.urlopen(f"http://{ip}:10250/sim/status", timeout=0.7) as r:
                status = json.loads(r.read())
        except (OSError, ValueError) as e:
            last = self._kubelet_seen.get(ip)
            slow = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
            if slow and last is not None and time.monotonic() - last[0] < NODE_MONITOR_GRACE:
                return last[1]
            self._kubelet_seen.pop(ip, None)
            return None
        self._kubelet_seen[ip] = (time.monotonic(), status)
        return status

    def _r(self, kind, api="v1"):
        return self.store.kind(kind, api)

    def pods(self, ns: str | None = None):
        return self.store.list(self._r("Pod"), ns)

    def reconcile(self) -> None:
        st = self.store
        nodes = st.list(self._r("Node"))
        self.kubelets = {}
        for n in nodes:
            ip = next((a["address"] for a in n.get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), "")
            self.kubelets[n["metadata"]["name"]] = self.kubelet_status(ip) if ip else None
        with st.lock:
            self._nodes()
            self._deployments()
            self._replicasets()
            self._daemonsets()
            self._statefulsets()
            self._jobs()
            self._gpu_operator()
            self._network_operator()
            self._pvcs()
            self._pods()
            self._workload_status()
            st.save()
        self._sync_processes()
        self._run_toolkits()
        self.last_reconcile = time.monotonic()

    # ---- nodes
    def _running_images_on(self, node: str) -> list[str]:
        return [c.get("image", "") for p in self.pods() if p["spec"].get("nodeName") == node
                and p.get("status", {}).get("phase") == "Running" for c in p["spec"]["containers"]]

    def _nodes(self) -> None:
        for node in self.store.list(self._r("Node")):
            name = node["metadata"]["name"]
            kl = self.kubelets.get(name)
            joined_here = kl is not None and kl.get("cluster_ok", True)
            running = self._running_images_on(name)
            cni = any(CNI_IMAGE_HINT in normalize_image(i) for i in running)
            if not joined_here:
                reason, msg, status = "NodeStatusUnknown", "Kubelet stopped posting node status.", "Unknown"
            elif not kl.get("ready"):
                reason, msg, status = "KubeletNotReady", "kubelet is not ready", "False"
            elif not cni:
                reason, status = "KubeletNotReady", "False"
                msg = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                       "message:Network plugin returns error: cni plugin not initialized")
            else:
                reason, msg, status = "KubeletReady", "kubelet is posting ready status", "True"
            new = copy.deepcopy(node)
            s = new.setdefault("status", {})
            conds = {c["type"]: c for c in s.get("conditions", [])}
            old_ready = conds.get("Ready", {})
            if (old_ready.get("status"), old_ready.get("reason"), old_ready.get("message")) != (status, reason, msg):
                conds["Ready"] = {"type": "Ready", "status": status, "reason": reason, "message": msg,
                                  "lastHeartbeatTime": now(), "lastTransitionTime": now()}
            for t, why in (("MemoryPressure", "KubeletHasSufficientMemory"), ("DiskPressure", "KubeletHasNoDiskPressure"),
                           ("PIDPressure", "KubeletHasSufficientPID")):
                conds.setdefault(t, {"type": t, "status": "False", "reason": why, "message": "",
                                     "lastHeartbeatTime": now(), "lastTransitionTime": now()})
            s["conditions"] = list(conds.values())
            if kl:
                cap = {"cpu": str(kl.get("cpu", 2)), "memory": f"{kl.get('memory_kib', 8 * 2**20)}Ki",
                       "pods": "110", "ephemeral-storage": "100Gi", "hugepages-2Mi": "0"}
                plugins = {kind for img in running for hint, kind in DEVICE_PLUGINS.items() if hint in img}
                if "gpu" in plugins and kl.get("gpus") and kl.get("nvidia_runtime"):
                    # the device plugin waits for the toolkit's validation: no nvidia runtime, no GPUs
                    cap["nvidia.com/gpu"] = str(kl["gpus"])
                if "npu" in plugins and kl.get("npus"):
                    cap[kl.get("npu_resource", "huawei.com/Ascend910")] = str(kl["npus"])
                if "rdma" in plugins:
                    cap.update(self._rdma_resources(name, kl))
                s["capacity"] = cap
                s["allocatable"] = dict(cap)
                s["images"] = [{"names": [i["ref"]], "sizeBytes": i.get("size", 1024)} for i in kl.get("images", [])
                               if not i["ref"].startswith("sha256:")]
                s["nodeInfo"] = kl.get("node_info", s.get("nodeInfo", {}))
                labels = new["metadata"].setdefault("labels", {})
                self._feature_labels(name, labels, kl, running)
            taints = [t for t in new["spec"].get("taints", []) if not t["key"].startswith("node.kubernetes.io/")]
            if status != "True":
                taints.append({"key": "node.kubernetes.io/not-ready" if status == "False"
                               else "node.kubernetes.io/unreachable", "effect": "NoSchedule"})
            if new["spec"].get("unschedulable"):
                taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})
            if taints:
                new["spec"]["taints"] = taints
            else:
                new["spec"].pop("taints", None)
            if new != node:
                self.store.put_internal(new)

    def _feature_labels(self, node: str, labels: dict, kl: dict, running: list[str]) -> None:
        """NFD (pci-10de), the GPU operator (gpu.present, deploy.*) and GFD (product, count) labels."""
        if any("node-feature-discovery:" in i for i in running) and kl.get("gpus"):
            labels["feature.node.kubernetes.io/pci-10de.present"] = "true"
        if kl.get("rdma") and self._nfd_labels_mellanox(running):
            labels[RDMA_NODE_LABEL] = "true"
        if labels.get("feature.node.kubernetes.io/pci-10de.present") == "true" and self._operator_running():
            labels["nvidia.com/gpu.present"] = "true"
            for operand in ("driver", "container-toolkit", "device-plugin", "dcgm-exporter",
                            "gpu-feature-discovery", "operator-validator"):
                labels[f"nvidia.com/gpu.deploy.{operand}"] = "true"
        if any("k8s-device-plugin:" in i for i in running) and kl.get("gpus") and kl.get("nvidia_runtime"):
            labels["nvidia.com/gpu.product"] = kl.get("gpu_model", "").replace(" ", "-")
            labels["nvidia.com/gpu.count"] = str(kl["gpus"])

    def _nfd_labels_mellanox(self, running: list[str]) -> bool:
        """NFD on the node writes pci-15b3.present for a Mellanox NIC: the GPU Operator's NFD through its worker
        config (PCI classes 02/0200/0207 with the vendor label), the Network Operator's only through its
        NodeFeatureRule `nvidia-nics-rules` (its worker config whitelists just 0300/0302)."""
        nfd = [i for i in running if "node-feature-discovery:" in i]
        if any("/nfd/node-feature-discovery:" in i for i in nfd):
            return True
        rule_res = self.store.registry.by_kind("nfd.k8s-sigs.io/v1alpha1", "NodeFeatureRule")
        rules = self.store.list(rule_res) if rule_res is not None else []
        return bool(nfd) and any(RDMA_NODE_LABEL.split("/", 1)[1] in (r.get("labels") or {})
                                 for rule in rules for r in (rule.get("spec") or {}).get("rules") or [])

    def _rdma_resources(self, node: str, kl: dict) -> dict[str, str]:
        """What the RDMA shared device plugin running on `node` advertises, per entry of ConfigMap rdma-devices (in
        the plugin pod's namespace): rdmaHcaMax when one of the node's devices matches the entry's selectors (OR
        within a list, AND between selectors, missing ones ignored; `devices` = ifNames), else 0. An entry without
        resourceName or a positive rdmaHcaMax advertises nothing (the real plugin refuses such a config)."""
        ns = next((p["metadata"]["namespace"] for p in self.pods() if p["spec"].get("nodeName") == node
                   and p.get("status", {}).get("phase") == "Running"
                   and any("k8s-rdma-shared-dev-plugin" in c.get("image", "") for c in p["spec"]["containers"])), None)
        cm = self.store.find(self._r("ConfigMap"), ns, "rdma-devices") if ns else None
        try:
            cfg = json.loads(((cm or {}).get("data") or {}).get("config.json", "{}"))
        except ValueError:
            return {}
        fields = {"vendors": "vendor", "deviceIDs": "deviceID", "drivers": "driver", "ifNames": "ifName",
                  "linkTypes": "linkType"}
        devices = [d for d in kl.get("rdma") or [] if isinstance(d, dict)]
        out = {}
        for entry in cfg.get("configList") or []:
            hca = entry.get("rdmaHcaMax")
            if not entry.get("resourceName") or not isinstance(hca, int) or hca <= 0:
                continue
            sel = dict(entry.get("selectors") or {}, **({"ifNames": entry["devices"]} if entry.get("devices") else {}))
            hit = any(all(not sel.get(k) or d.get(f) in sel[k] for k, f in fields.items()) for d in devices)
            out[f"{entry.get('resourcePrefix') or 'rdma'}/{entry['resourceName']}"] = str(hca if hit else 0)
        return out

    # ---- workloads
    def _owned_pods(self, owner: dict) -> list[dict]:
        uid = owner["metadata"]["uid"]
        return [p for p in self.pods(owner["metadata"]["namespace"])
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    @staticmethod
    def _owner_ref(owner: dict) -> dict:
        return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}

    def _new_pod(self, owner: dict, template: dict, name: str, extra_labels: dict | None = None,
                 node: str | None = None) -> dict:
        t = copy.deepcopy(template)
        meta = t.get("metadata") or {}
        labels = dict(meta.get("labels") or {}, **(extra_labels or {}))
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels,
                            "annotations": meta.get("annotations") or {},
                            "ownerReferences": [self._owner_ref(owner)]},
               "spec": t.get("spec", {}), "status": {"phase": "Pending"}}
        pod["spec"].setdefault("restartPolicy", "Always")
        if node:
            pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}
            tol = pod["spec"].setdefault("tolerations", [])
            for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                        "node.kubernetes.io/unschedulable", "node.kubernetes.io/disk-pressure",
                        "node.kubernetes.io/memory-pressure", "node.kubernetes.io/pid-pressure"):
                tol.append({"key": key, "operator": "Exists", "effect": "NoSchedule"})
        return self.store.put_internal(pod)

    @staticmethod
    def _hash(template: dict) -> str:
        return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]

    def _deployments(self) -> None:
        rs_res = self._r("ReplicaSet", "apps/v1")
        for d in self.store.list(self._r("Deployment", "apps/v1")):
            h = self._hash(d["spec"]["template"])
            name = f"{d['metadata']['name']}-{h}"
            uid = d["metadata"]["uid"]
            for rs in self.store.list(rs_res, d["metadata"]["namespace"]):
                owned = any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])
                if owned and rs["metadata"]["name"] != name and rs["spec"].get("replicas", 0) != 0:
                    rs["spec"]["replicas"] = 0
                    rs["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1   # a spec change
                    self.store.put_internal(rs)
            rs = self.store.find(rs_res, d["metadata"]["namespace"], name)
            replicas = d["spec"].get("replicas", 1)
            template = copy.deepcopy(d["spec"]["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
            if rs is None:
                rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                      "metadata": {"name": name, "namespace": d["metadata"]["namespace"],
                                   "labels": template["metadata"]["labels"], "ownerReferences": [self._owner_ref(d)]},
                      "spec": {"replicas": replicas, "selector": d["spec"]["selector"], "template": template}}
                self.store.put_internal(rs)
            elif rs["spec"].get("replicas") != replicas:
                rs["spec"]["replicas"] = replicas
                rs["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1
                self.store.put_internal(rs)

    def _replicasets(self) -> None:
        for rs in self.store.list(self._r("ReplicaSet", "apps/v1")):
            pods = [p for p in self._owned_pods(rs) if not p["metadata"].get("deletionTimestamp")]
            want = rs["spec"].get("replicas", 1)
            for _ in range(want - len(pods)):
                self._new_pod(rs, rs["spec"]["template"], f"{rs['metadata']['name']}-{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:5]}")
            for p in pods[want:] if len(pods) > want else []:
                self.store.delete_internal(p)

    def _daemonsets(self) -> None:
        nodes = self.store.list(self._r("Node"))
        for ds in self.store.list(self._r("DaemonSet", "apps/v1")):
            spec = ds["spec"]["template"]["spec"]
            want = {n["metadata"]["name"] for n in nodes if self._selects(spec, n)
                    and self._tolerates(spec, n, daemon=True)}
            pods = self._owned_pods(ds)
            h = self._hash(ds["spec"]["template"])
            have = {}
            for p in pods:
                node = p["spec"].get("nodeName") or self._affinity_node(p)
                if node not in want or p["metadata"].get("labels", {}).get("controller-revision-hash") != h:
                    self.store.delete_internal(p)
                else:
                    have[node] = p
            for node in sorted(want - set(have)):
                suffix = hashlib.sha1(f"{node}{time.time_ns()}".encode()).hexdigest()[:5]
                self._new_pod(ds, ds["spec"]["template"], f"{ds['metadata']['name']}-{suffix}",
                              {"controller-revision-hash": h}, node=node)

    def _statefulsets(self) -> None:
        for sts in self.store.list(self._r("StatefulSet", "apps/v1")):
            want = sts["spec"].get("replicas", 1)
            pods = {p["metadata"]["name"]: p for p in self._owned_pods(sts)}
            for i in range(want):
                name = f"{sts['metadata']['name']}-{i}"
                if name not in pods:
                    self._new_pod(sts, sts["spec"]["template"], name,
                                  {"statefulset.kubernetes.io/pod-name": name})
            for name, p in pods.items():
                if int(name.rsplit("-", 1)[-1]) >= want:
                    self.store.delete_internal(p)

    def _jobs(self) -> None:
        for job in self.store.list(self._r("Job", "batch/v1")):
            if job.get("status", {}).get("succeeded"):
                continue
            pods = self._owned_pods(job)
            if not pods:
                t = copy.deepcopy(job["spec"]["template"])
                t.setdefault("metadata", {}).setdefault("labels", {})["job-name"] = job["metadata"]["name"]
                self._new_pod(job, t, f"{job['metadata']['name']}-{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:5]}")

    def _operator_running(self) -> bool:
        return any("gpu-operator:" in c.get("image", "") and p.get("status", {}).get("phase") == "Running"
                   for p in self.pods() for c in p["spec"]["containers"])

    def _gpu_operator(self) -> None:
        """The ClusterPolicy controller: operand DaemonSets once the operator pod runs."""
        cp_res = self.store.registry.by_kind("nvidia.com/v1", "ClusterPolicy")
        if cp_res is None or not self._operator_running():
            return
        ns = next((p["metadata"]["namespace"] for p in self.pods() for c in p["spec"]["containers"]
                   if "gpu-operator:" in c.get("image", "")), "gpu-operator")
        for cp in self.store.list(cp_res):
            spec = cp.get("spec", {})
            operands = [("nvidia-container-toolkit-daemonset", "toolkit", "container-toolkit"),
                        ("nvidia-device-plugin-daemonset", "devicePlugin", "device-plugin"),
                        ("gpu-feature-discovery", "gfd", "gpu-feature-discovery"),
                        ("nvidia-dcgm-exporter", "dcgmExporter", "dcgm-exporter"),
                        ("nvidia-operator-validator", "validator", "operator-validator")]
            for name, key, deploy in operands:
                comp = spec.get(key) or {}
                if comp.get("enabled") is False or not comp.get("image"):
                    continue
                version = comp.get("version") or "v25.10.0"
                image = f"{comp.get('repository')}/{comp['image']}:{version}" if comp.get("repository") else \
                    f"{comp['image']}:{version}"
                ds_res = self._r("DaemonSet", "apps/v1")
                if self.store.find(ds_res, ns, name):
                    continue
                self.store.put_internal({
                    "apiVersion": "apps/v1", "kind": "DaemonSet",
                    "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                                 "ownerReferences": [self._owner_ref(cp)]},
                    "spec": {"selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"nodeSelector": {f"nvidia.com/gpu.deploy.{deploy}": "true"},
                                                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                                    "effect": "NoSchedule"}],
                                                   "containers": [{"name": key.lower(), "image": image,
                                                                   "env": list(comp.get("env") or [])}]}}}})

    def _network_operator(self) -> None:
        """The NicClusterPolicy controller (network-operator.md §1), once the operator pod runs: only the policy
        named nic-cluster-policy is reconciled (any other gets state `ignore`); its rdmaSharedDevicePlugin becomes
        ConfigMap rdma-devices (config.json verbatim) and DaemonSet rdma-shared-dp-ds on the Mellanox nodes."""
        res = self.store.registry.by_kind("mellanox.com/v1alpha1", "NicClusterPolicy")
        ns = next((p["metadata"]["namespace"] for p in self.pods() for c in p["spec"]["containers"]
                   if "cloud-native/network-operator:" in c.get("image", "")
                   and p.get("status", {}).get("phase") == "Running"), None)
        if res is None or ns is None:
            return
        for ncp in self.store.list(res):
            name = ncp["metadata"]["name"]
            if name != "nic-cluster-policy":
                self._set_status(ncp, {"state": "ignore", "reason": f"Unsupported NicClusterPolicy instance {name}. "
                                       "Only instance with name nic-cluster-policy is supported"})
                continue
            plugin = (ncp.get("spec") or {}).get("rdmaSharedDevicePlugin")
            if not plugin:
                continue
            cm = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "rdma-devices", "namespace": ns, "ownerReferences": [self._owner_ref(ncp)]},
                  "data": {"config.json": plugin.get("config") or ""}}
            old = self.store.find(self._r("ConfigMap"), ns, "rdma-devices")
            if old is None or old.get("data") != cm["data"]:
                if old is not None:
                    old["data"] = cm["data"]
                self.store.put_internal(old or cm)
            image = f"{plugin['repository']}/{plugin['image']}:{plugin['version']}"
            labels = {"app": "rdma-shared-dp"}
            ds = {"apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": {"name": "rdma-shared-dp-ds", "namespace": ns, "labels": labels,
                               "ownerReferences": [self._owner_ref(ncp)]},
                  "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                      "nodeSelector": {RDMA_NODE_LABEL: "true"}, "hostNetwork": True,
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                      "containers": [{"name": "rdma-shared-dp", "image": image,
                                      "securityContext": {"privileged": True}}]}}}}
            old = self.store.find(self._r("DaemonSet", "apps/v1"), ns, "rdma-shared-dp-ds")
            if old is None or old["spec"]["template"] != ds["spec"]["template"]:
                if old is not None:
                    old["spec"] = ds["spec"]
                self.store.put_internal(old or ds)
            self._set_status(ncp, {"state": "ready" if old is not None else "notReady"})

    # ---- storage
    def _provisioner_running(self, provisioner: str) -> bool:
        if provisioner == "microk8s.io/hostpath":
            return any("hostpath-provisioner:" in c.get("image", "") and p.get("status", {}).get("phase") == "Running"
                       for p in self.pods() for c in p["spec"]["containers"])
        return False

    def _default_sc(self) -> dict | None:
        for sc in self.store.list(self._r("StorageClass", "storage.k8s.io/v1")):
            if (sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
                return sc
        return None

    def _pvcs(self) -> None:
        pv_res, sc_res = self._r("PersistentVolume"), self._r("StorageClass", "storage.k8s.io/v1")
        for pvc in self.store.list(self._r("PersistentVolumeClaim")):
            if pvc.get("status", {}).get("phase") == "Bound":
                continue
            spec = pvc["spec"]
            sc_name = spec.get("storageClassName")
            if sc_name is None and (sc := self._default_sc()):
                sc_name = spec["storageClassName"] = sc["metadata"]["name"]
            pv = None
            for cand in self.store.list(pv_res):
                cs = cand["spec"]
                if cand.get("status", {}).get("phase") not in (None, "Available"):
                    continue
                if spec.get("volumeName") and spec["volumeName"] != cand["metadata"]["name"]:
                    continue
                ref = cs.get("claimRef") or {}  # a PV pre-bound to a claim binds only to that claim (PV controller)
                if ref and (ref.get("namespace"), ref.get("name")) != (pvc["metadata"]["namespace"],
                                                                       pvc["metadata"]["name"]):
                    continue
                if (cs.get("storageClassName") or "") != (sc_name or "") and not spec.get("volumeName"):
                    continue
                if quantity(cs.get("capacity", {}).get("storage", "0")) < quantity(
                        spec.get("resources", {}).get("requests", {}).get("storage", "0")):
                    continue
                if not set(spec.get("accessModes", [])) <= set(cs.get("accessModes", [])):
                    continue
                pv = cand
                break
            sc = self.store.find(sc_res, "", sc_name) if sc_name else None
            if pv is None and sc and self._provisioner_running(sc.get("provisioner", "")):
                if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not self._consumer_scheduled(pvc):
                    continue
                pv = self.store.put_internal({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": f"pvc-{pvc['metadata']['uid']}",
                                 "annotations": {"pv.kubernetes.io/provisioned-by": sc["provisioner"]}},
                    "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                             "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                             "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                             "storageClassName": sc_name,
                             "hostPath": {"path": f"/var/snap/microk8s/common/default-storage/"
                                                  f"{pvc['metadata']['namespace']}-{pvc['metadata']['name']}-pvc-"
                                                  f"{pvc['metadata']['uid']}"}},
                    "status": {"phase": "Available"}})
            if pv is None:
                pvc.setdefault("status", {})["phase"] = "Pending"
                self.store.put_internal(pvc)
                continue
            pv["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": pvc["metadata"]["namespace"],
                                      "name": pvc["metadata"]["name"], "uid": pvc["metadata"]["uid"]}
            pv["status"] = {"phase": "Bound"}
            self.store.put_internal(pv)
            pvc["spec"]["volumeName"] = pv["metadata"]["name"]
            pvc["status"] = {"phase": "Bound", "accessModes": pv["spec"].get("accessModes", []),
                             "capacity": pv["spec"].get("capacity", {})}
            self.store.put_internal(pvc)

    def _consumer_scheduled(self, pvc: dict) -> bool:
        for p in self.pods(pvc["metadata"]["namespace"]):
            for v in p["spec"].get("volumes") or []:
                if (v.get("persistentVolumeClaim") or {}).get("claimName") == pvc["metadata"]["name"]:
                    return True
        return False

    # ---- scheduling and pod status
    @staticmethod
    def _affinity_node(pod: dict) -> str | None:
        terms = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
        for t in terms:
            for f in t.get("matchFields") or []:
                if f.get("key") == "metadata.name" and f.get("values"):
                    return f["values"][0]
        return None

    @staticmethod
    def _selects(podspec: dict, node: dict) -> bool:
        labels = node["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in (podspec.get("nodeSelector") or {}).items()):
            return False
        terms = (((podspec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
        if not terms:
            return True
        for t in terms:
            ok = all(selector_dict_match({"matchExpressions": [e]}, labels) for e in t.get("matchExpressions") or [])
            ok = ok and all(node["metadata"]["name"] in (f.get("values") or []) for f in t.get("matchFields") or []
                            if f.get("key") == "metadata.name")
            if ok:
                return True
        return False

    @staticmethod
    def _tolerates(podspec: dict, node: dict, daemon: bool = False) -> bool:
        return not Cluster._untolerated(podspec, node, daemon)

    @staticmethod
    def _untolerated(podspec: dict, node: dict, daemon: bool = False) -> list[dict]:
        out = []
        for taint in node["spec"].get("taints") or []:
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if daemon and taint["key"].startswith("node.kubernetes.io/"):
                continue
            ok = False
            for tol in podspec.get("tolerations") or []:
                if tol.get("effect") and tol["effect"] != taint["effect"]:
                    continue
                if tol.get("operator") == "Exists" and (not tol.get("key") or tol["key"] == taint["key"]) or tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
                    ok = True
            if not ok:
                out.append(taint)
        return out

    def _used(self, node: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for p in self.pods():
            if p["spec"].get("nodeName") == node and p.get("status", {}).get("phase") in ("Pending", "Running", None):
                for k, v in pod_requests(p).items():
                    used[k] = used.get(k, 0) + v
        return used

    def _schedule(self, pod: dict) -> str | None:
        nodes = self.store.list(self._r("Node"))
        reasons: dict[str, int] = {}
        victims: dict[str, int] = {}
        pvc_unbound = self._unbound_claims(pod)
        if pvc_unbound:
            msg = f"0/{len(nodes)} nodes are available: pod has unbound immediate PersistentVolumeClaims. " \
                  f"preemption: 0/{len(nodes)} nodes are available: {len(nodes)} Preemption is not helpful for scheduling."
            self._event(pod, "Warning", "FailedScheduling", msg, source="default-scheduler")
            return None
        want = pod_requests(pod)
        for n in nodes:
            name = n["metadata"]["name"]
            why = None
            if n["spec"].get("unschedulable") and not self._tolerates_key(pod, "node.kubernetes.io/unschedulable"):
                why = "node(s) were unschedulable"
            elif not self._selects(pod["spec"], n):
                why = "node(s) didn't match Pod's node affinity/selector"
            elif bad := self._untolerated(pod["spec"], n):
                t = bad[0]
                why = f"node(s) had untolerated taint {{{t['key']}: {t.get('value', '')}}}"
            else:
                alloc = {k: quantity(v) for k, v in (n.get("status", {}).get("allocatable") or {}).items()}
                used = self._used(name)
                short = [k for k, v in sorted(want.items()) if v > 0 and used.get(k, 0) + v > alloc.get(k, 0)]
                if short:
                    for k in short:
                        reasons[f"Insufficient {k}"] = reasons.get(f"Insufficient {k}", 0) + 1
                    victims[name] = 1
                    continue
                return name
            reasons[why] = reasons.get(why, 0) + 1
        total = len(nodes)
        detail = ", ".join(f"{c} {r}" for r, c in sorted(reasons.items()))
        nv = len(victims)
        pre = ", ".join(x for x in (f"{nv} No preemption victims found for incoming pod" if nv else "",
                                    f"{total - nv} Preemption is not helpful for scheduling" if total - nv else "") if x)
        msg = f"0/{total} nodes are available: {detail}. preemption: 0/{total} nodes are available: {pre}." if total \
            else "no nodes available to schedule pods"
        self._event(pod, "Warning", "FailedScheduling", msg, source="default-scheduler")
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                "lastTransitionTime": now()}
        pod["status"] = {"phase": "Pending", "conditions": [cond], "qosClass": self._qos(pod)}
        return None

    @staticmethod
    def _tolerates_key(pod: dict, key: str) -> bool:
        return any(t.get("key") == key or (t.get("operator") == "Exists" and not t.get("key"))
                   for t in pod["spec"].get("tolerations") or [])

    def _unbound_claims(self, pod: dict) -> list[str]:
        res = self._r("PersistentVolumeClaim")
        out = []
        for v in pod["spec"].get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                pvc = self.store.find(res, pod["metadata"]["namespace"], claim)
                if pvc is None:
                    out.append(claim)
                    continue
                sc = self.store.find(self._r("StorageClass", "storage.k8s.io/v1"), "",
                                     pvc["spec"].get("storageClassName") or "")
                wffc = sc is not None and sc.get("volumeBindingMode") == "WaitForFirstConsumer"
                if pvc.get("status", {}).get("phase") != "Bound" and not (wffc and self._provisioner_running(sc.get("provisioner", ""))):
                    out.append(claim)
        return out

    @staticmethod
    def _qos(pod: dict) -> str:
        return pod_qos(pod)

    def _event(self, obj: dict, etype: str, reason: str, message: str, source: str = "kubelet") -> None:
        ns = obj["metadata"].get("namespace", "default")
        ev_res = self._r("Event")
        name = f"{obj['metadata']['name']}.{hashlib.sha1((reason + message).encode()).hexdigest()[:16]}"
        ev = self.store.find(ev_res, ns, name)
        if ev:
            ev["count"] = ev.get("count", 1) + 1
            ev["lastTimestamp"] = now()
            if self.store.rv % 8 == 0:   # keep the store from churning on every pass
                self.store.put_internal(ev)
            return
        self.store.put_internal({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": obj["kind"], "namespace": ns, "name": obj["metadata"]["name"],
                               "uid": obj["metadata"].get("uid", ""), "apiVersion": obj.get("apiVersion", "v1")},
            "reason": reason, "message": message, "type": etype, "count": 1,
            "firstTimestamp": now(), "lastTimestamp": now(), "source": {"component": source}})

    def _pods(self) -> None:
        for pod in self.pods():
            before = copy.deepcopy(pod)
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            node = pod["spec"].get("nodeName")
            if not node:
                node = self._schedule(pod)
                if node is None:
                    if pod != before:
                        self.store.put_internal(pod)
                    continue
                pod["spec"]["nodeName"] = node
                self._event(pod, "Normal", "Scheduled", f"Successfully assigned {pod['metadata']['namespace']}/"
                            f"{pod['metadata']['name']} to {node}", source="default-scheduler")
            if not self._volumes_set_up(pod, node):
                if pod != before:
                    self.store.put_internal(pod)
                continue
            self._run_on_node(pod, node)
            if pod != before:
                self.store.put_internal(pod)

    def _volumes_set_up(self, pod: dict, node: str) -> bool:
        """The kubelet's hostPath type check: a `type: Directory` path the node reports missing (ascend.HOSTPATH_DIRS)
        keeps the pod in ContainerCreating with a FailedMount event, as on a real node."""
        dirs = (self.kubelets.get(node) or {}).get("host_dirs") or {}
        for v in pod["spec"].get("volumes") or []:
            hp = v.get("hostPath") or {}
            if hp.get("type") == "Directory" and dirs.get(hp.get("path")) is False:
                s = pod.setdefault("status", {})
                s.update(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
                s["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                           "restartCount": 0, "started": False,
                                           "state": {"waiting": {"reason": "ContainerCreating"}}}
                                          for c in pod["spec"]["containers"]]
                self._event(pod, "Warning", "FailedMount", f'MountVolume.SetUp failed for volume "{v["name"]}" : '
                            f'hostPath type check failed: {hp["path"]} is not a directory', source="kubelet")
                return False
        return True

    def _run_on_node(self, pod: dict, node: str) -> None:
        kl = self.kubelets.get(node)
        n = self.store.find(self._r("Node"), "", node)
        s = pod.setdefault("status", {})
        was_running = s.get("phase") == "Running"
        s.setdefault("startTime", now())
        s["hostIP"] = next((a["address"] for a in (n or {}).get("status", {}).get("addresses", [])
                            if a["type"] == "InternalIP"), "")
        s["qosClass"] = self._qos(pod)
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": s.get("startTime")}
        if kl is None or not kl.get("cluster_ok", True):
            return   # kubelet unreachable: status stays as last reported (the real lifecycle is slower still)
        images = kl.get("images", [])
        sandbox = kl.get("sandbox_image", "registry.k8s.io/pause:3.7")
        if not image_present(sandbox, images):
            s.update(phase="Pending", conditions=[scheduled])
            s["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                       "restartCount": 0, "started": False,
                                       "state": {"waiting": {"reason": "ContainerCreating"}}}
                                      for c in pod["spec"]["containers"]]
            self._event(pod, "Warning", "FailedCreatePodSandBox",
                        f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox image '
                        f'"{sandbox}": failed to pull image "{sandbox}": failed to pull and unpack image '
                        f'"{sandbox}": failed to resolve reference "{sandbox}": failed to do request: Head '
                        f'"https://{sandbox.split("/")[0]}/v2/": dial tcp: lookup {sandbox.split("/")[0]}: '
                        "no such host")
            return
        handler = self._runtime_handler(pod)
        if handler and not (handler == "runc" or (handler == "nvidia" and kl.get("nvidia_runtime"))):
            # containerd's CRI: a RuntimeClass whose handler is not in its config (the toolkit never wrote it)
            s.update(phase="Pending", conditions=[scheduled])
            s["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                       "restartCount": 0, "started": False,
                                       "state": {"waiting": {"reason": "ContainerCreating"}}}
                                      for c in pod["spec"]["containers"]]
            self._event(pod, "Warning", "FailedCreatePodSandBox", "Failed to create pod sandbox: rpc error: code = "
                        f'Unknown desc = failed to get sandbox runtime: no runtime for "{handler}" is configured')
            return
        backoff = int(time.time() / 5) % 2 == 1

        def status_of(c: dict, init: bool) -> dict:
            policy = pull_policy(c)
            present = image_present(c["image"], images)
            if policy == "Never" and not present:
                reason, msg = "ErrImageNeverPull", f'Container image "{c["image"]}" is not present with pull policy of Never'
            elif policy == "Always" or not present:
                ref = normalize_image(c["image"])
                reason = "ImagePullBackOff" if backoff else "ErrImagePull"
                registry = ref.split("/")[0]
                registry = "registry-1.docker.io" if registry == "docker.io" else registry
                pull_err = (f'rpc error: code = Unknown desc = failed to pull and unpack image "{ref}": failed to '
                            f'resolve reference "{ref}": failed to do request: Head "https://{registry}/v2/'
                            f'{ref.split("/", 1)[1].rsplit(":", 1)[0]}/manifests/{ref.rsplit(":", 1)[-1]}": dial tcp: '
                            f'lookup {registry}: no such host')
                msg = f'Back-off pulling image "{c["image"]}"' if backoff else pull_err
                self._event(pod, "Warning", "Failed", f'Failed to pull image "{c["image"]}": {pull_err}')
            elif not init and one_shot and smoke.is_smoke(c) and (ran := smoke.run(pod, *self._with_devices(
                    pod, c, node, kl))):
                code, log = ran
                pod["metadata"].setdefault("annotations", {})["sim.provision/log"] = log   # kubectl logs
                image = normalize_image(c["image"])
                return {"name": c["name"], "image": image, "imageID": image, "ready": False, "restartCount": 0,
                        "started": False, "state": {"terminated": {
                            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                            "startedAt": s["startTime"], "finishedAt": now()}}}
            elif not init and process_backed(c):
                return self._process_status(pod, c, kl, s["startTime"])
            elif not init and TOOLKIT_IMAGE_HINT in c["image"] and (error := self._toolkit_error(node)):
                pod["metadata"].setdefault("annotations", {})["sim.provision/log"] = error + "\n"   # kubectl logs
                return {"name": c["name"], "image": normalize_image(c["image"]), "imageID": "", "ready": False,
                        "restartCount": 1, "started": False,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed "
                                              f"container={c['name']} pod={pod['metadata']['name']}"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": error}}}
            else:
                return {"name": c["name"], "image": normalize_image(c["image"]),
                        "imageID": normalize_image(c["image"]), "ready": not init, "restartCount": 0,
                        "started": not init,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": s["startTime"],
                                                 "finishedAt": s["startTime"]}} if init or one_shot
                        else {"running": {"startedAt": s["startTime"]}}}
            return {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                    "started": False, "state": {"waiting": {"reason": reason, "message": msg}}}

        one_shot = pod["spec"].get("restartPolicy") in ("Never", "OnFailure")
        inits = [status_of(c, True) for c in pod["spec"].get("initContainers") or []]
        init_ok = all("terminated" in i["state"] for i in inits)
        s["initContainerStatuses"] = inits if inits else s.pop("initContainerStatuses", None) or []
        if not inits:
            s.pop("initContainerStatuses", None)
        if init_ok:
            cs = [status_of(c, False) for c in pod["spec"]["containers"]]
        else:
            cs = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                   "started": False, "state": {"waiting": {"reason": "PodInitializing"}}}
                  for c in pod["spec"]["containers"]]
        s["containerStatuses"] = cs
        running = all("running" in c["state"] or c.get("lastState") for c in cs)   # crash-looping = started
        done = all("terminated" in c["state"] for c in cs)
        ready = running and kl.get("ready", True) and all(c.get("ready") for c in cs)
        failed = done and pod["spec"].get("restartPolicy") == "Never" and any(
            c["state"]["terminated"].get("exitCode") for c in cs)
        s["phase"] = "Failed" if failed else "Succeeded" if done else "Running" if running else "Pending"
        if s["phase"] != "Pending":
            s["podIP"] = s.get("podIP") or self._free_pod_ip(node, pod["metadata"]["name"])
            s["podIPs"] = [{"ip": s["podIP"]}]
        t = s.get("startTime")
        s["conditions"] = [
            {"type": "Initialized", "status": "True" if init_ok else "False", "lastTransitionTime": t},
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": t},
            scheduled]
        if running and not was_running:
            self._event(pod, "Normal", "Started", "Started container " + pod["spec"]["containers"][0]["name"])

    def _runtime_handler(self, pod: dict) -> str:
        name = pod["spec"].get("runtimeClassName")
        if not name:
            return ""
        rc = self.store.find(self._r("RuntimeClass", "node.k8s.io/v1"), "", name)
        return (rc or {}).get("handler") or name

    def _with_devices(self, pod: dict, c: dict, node: str, kl: dict) -> tuple[dict, dict]:
        """The kubelet's view of a container for the smoke images: the GPUs the device plugin gave it
        (`allocated_gpus`), and ASCEND_VISIBLE_DEVICES for its NPUs as the Ascend plugin sets it when the Ascend
        Docker Runtime is there (ascend.md §3). Devices go in creation order among the node's live pods."""
        npu_res = kl.get("npu_resource", "huawei.com/Ascend910")
        taken = {"nvidia.com/gpu": 0, npu_res: 0}
        mine: dict[str, list[int]] = {}
        pods = sorted((p for p in self.pods() if p["spec"].get("nodeName") == node
                       and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")),
                      key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
        for p in pods:
            for pc in p["spec"]["containers"]:
                limits = (pc.get("resources") or {}).get("limits") or {}
                for res, total in (("nvidia.com/gpu", kl.get("gpus") or 0), (npu_res, kl.get("npus") or 0)):
                    n = int(quantity(limits.get(res, 0)))
                    same = p is pod or p["metadata"].get("uid") == pod["metadata"].get("uid")
                    if same and pc["name"] == c["name"]:
                        mine[res] = [(taken[res] + i) % max(total, 1) for i in range(n)]
                    taken[res] += n
        view = dict(kl, allocated_gpus=mine.get("nvidia.com/gpu", []))
        c = copy.deepcopy(c)
        if mine.get(npu_res) and kl.get("ascend_runtime"):
            c.setdefault("env", []).append({"name": "ASCEND_VISIBLE_DEVICES",
                                           "value": ",".join(map(str, mine[npu_res]))})
        return c, view

    def _free_pod_ip(self, node: str, name: str) -> str:
        """An address of the node's block in 10.1.0.0/16 (Calico IPAM) that no pod holds (pod IPs are routed
        for real: runtime.py)."""
        used = {(p.get("status") or {}).get("podIP") for p in self.pods()}
        block, host = hash(node) % 250, hash(name) % 250
        return next(ip for i in range(250) if (ip := f"10.1.{block}.{(host + i) % 250 + 2}") not in used)

    def _process_status(self, pod: dict, c: dict, kl: dict, started: str) -> dict:
        """A container the node really runs (runtime.py): running/ready from its readiness probe, or
        CrashLoopBackOff with the exit code when the process ended."""
        proc = ((kl.get("processes") or {}).get(pod["metadata"].get("uid", "")) or {}).get(c["name"])
        image = normalize_image(c["image"])
        base = {"name": c["name"], "image": image, "imageID": image, "restartCount": (proc or {}).get("restarts", 0)}
        if proc is None or proc.get("state") == "running":
            ready = bool(proc and proc.get("ready"))
            return dict(base, ready=ready, started=True,
                        state={"running": {"startedAt": (proc or {}).get("started_at") or started}})
        pod_name = pod["metadata"]["name"]
        self._event(pod, "Warning", "BackOff", "Back-off restarting failed container "
                    f"{c['name']} in pod {pod_name}_{pod['metadata'].get('namespace', '')}")
        return dict(base, ready=False, started=False,
                    state={"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off restarting failed "
                                       f"container={c['name']} pod={pod_name}"}},
                    lastState={"terminated": {"exitCode": proc.get("exit_code") or 1, "reason": "Error",
                                              "message": proc.get("message", "")}})

    def _toolkit_error(self, node: str) -> str:
        result = self._toolkit_results.get(node)
        return "" if result is None or result.get("ok") else result.get("error", "failed")

    def _run_toolkits(self) -> None:
        """A container-toolkit operand on a node whose containerd has no nvidia runtime yet configures it there
        (toolkit.py, through the node's kubelet); its result decides the container's status."""
        want = {}
        with self.store.lock:
            for pod in self.pods():
                node = pod["spec"].get("nodeName")
                kl = self.kubelets.get(node or "")
                for c in pod["spec"]["containers"]:
                    if TOOLKIT_IMAGE_HINT in c.get("image", "") and kl and image_present(c["image"], kl.get("images", [])):
                        want[node] = {e["name"]: str(e.get("value", "")) for e in c.get("env") or [] if "name" in e}
        for node, env in want.items():
            kl = self.kubelets.get(node) or {}
            if kl.get("nvidia_runtime"):
                self._toolkit_results[node] = {"ok": True}
                continue
            try:
                req = urllib.request.Request(f"http://{self._node_ip(node)}:10250/sim/toolkit",
                                             json.dumps({"env": env}).encode(), {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    self._toolkit_results[node] = json.loads(r.read())
            except (OSError, ValueError):
                pass

    def _sync_processes(self) -> None:
        """Tell each node's kubelet which of its pods' real processes (runtime.py) should run, with the
        contents of their ConfigMap/Secret volumes and the hostPath of their PersistentVolumes."""
        want: dict[str, list[dict]] = {}
        with self.store.lock:
            for pod in self.pods():
                node = pod["spec"].get("nodeName")
                st = pod.get("status") or {}
                if not node or st.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                    continue
                cs = [c for c in pod["spec"]["containers"] if process_backed(c)]
                if cs:
                    want.setdefault(node, []).append(
                        {"uid": pod["metadata"]["uid"], "namespace": pod["metadata"]["namespace"],
                         "name": pod["metadata"]["name"], "containers": [self._runtime_spec(pod, c) for c in cs]})
        rules = self._service_rules()
        for node, kl in self.kubelets.items():
            if kl is None:
                continue
            pods = want.get(node, [])
            digest = hashlib.sha256(json.dumps([pods, rules], sort_keys=True).encode()).hexdigest()
            have = set(kl.get("processes") or {})
            if (self._synced.get(node) == digest or not pods) and have == {p["uid"] for p in pods}:
                continue   # nothing to start or stop there
            ip = kl.get("ip") or self._node_ip(node)
            try:
                body = json.dumps({"pods": pods, "services": rules}).encode()
                req = urllib.request.Request(f"http://{ip}:10250/sim/pods", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5):
                    self._synced[node] = digest
            except OSError:
                self._synced.pop(node, None)

    def _node_ip(self, name: str) -> str:
        n = self.store.find(self._r("Node"), "", name) or {}
        return next((a["address"] for a in n.get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), "")

    def _runtime_spec(self, pod: dict, c: dict, init: bool = False) -> dict:
        import base64
        ns = pod["metadata"]["namespace"]
        vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for m in c.get("volumeMounts") or []:
            v = vols.get(m["name"]) or {}
            files: dict[str, str] = {}
            if "secret" in v:
                obj = self.store.find(self._r("Secret"), ns, v["secret"]["secretName"]) or {}
                files = dict(obj.get("data") or {})
            elif "configMap" in v:
                obj = self.store.find(self._r("ConfigMap"), ns, v["configMap"]["name"]) or {}
                files = {k: base64.b64encode(x.encode()).decode() for k, x in (obj.get("data") or {}).items()}
            elif "persistentVolumeClaim" in v:
                pvc = self.store.find(self._r("PersistentVolumeClaim"), ns, v["persistentVolumeClaim"]["claimName"])
                pv = self.store.find(self._r("PersistentVolume"), "", ((pvc or {}).get("spec") or {}).get("volumeName", ""))
                host = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path")
                if host:
                    mount = _dir_mount(m, host)
                    if ((pv or {}).get("metadata", {}).get("annotations") or {}).get(
                            "pv.kubernetes.io/provisioned-by") == "microk8s.io/hostpath" and not m.get("subPath"):
                        # MicroK8s' hostpath-provisioner makes the volume's directory `mkdir -m 0777 -p`
                        # (umask 0) before the pod starts (canonical/hostpath-provisioner, Provision)
                        mount["create_mode"] = 0o777
                    mounts.append(mount)
                continue
            elif "hostPath" in v:
                mounts.append(_dir_mount(m, v["hostPath"]["path"]))
                continue
            else:
                continue
            if m.get("subPath"):
                if m["subPath"] in files:
                    mounts.append({"path": m["mountPath"], "kind": "file", "data": files[m["subPath"]]})
            else:
                mounts.append({"path": m["mountPath"], "kind": "files", "files": files})
        sa = pod["spec"].get("serviceAccountName") or "default"
        sa_obj = self.store.find(self._r("ServiceAccount"), ns, sa) or {}
        if pod["spec"].get("automountServiceAccountToken", sa_obj.get("automountServiceAccountToken", True)) \
                and self.certs_dir:   # the ServiceAccount admission plugin's kube-api-access volume
            ca = Path(self.certs_dir, "ca.crt").read_bytes()
            mounts.append({"path": "/var/run/secrets/kubernetes.io/serviceaccount", "kind": "files", "files": {
                k: base64.b64encode(v).decode() for k, v in {
                    "token": self.sa_token(ns, sa, pod["metadata"]["uid"]).encode(), "ca.crt": ca,
                    "namespace": ns.encode()}.items()}})
        env = service_env(self.store.list(self._r("Service")), ns, pod["spec"].get("enableServiceLinks", True))
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif (e.get("valueFrom") or {}).get("fieldRef"):
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                env[e["name"]] = {"metadata.namespace": ns, "metadata.name": pod["metadata"]["name"],
                                  "status.podIP": (pod.get("status") or {}).get("podIP", "")}.get(path, "")
            elif (e.get("valueFrom") or {}).get("secretKeyRef"):
                ref = e["valueFrom"]["secretKeyRef"]
                obj = self.store.find(self._r("Secret"), ns, ref["name"]) or {}
                if ref["key"] in (obj.get("data") or {}):
                    env[e["name"]] = base64.b64decode(obj["data"][ref["key"]]).decode()
        argv = ([expand(a, env) for a in c.get("command") or []], [expand(a, env) for a in c.get("args") or []])
        http = ((c.get("readinessProbe") or {}).get("httpGet")) or None
        probe = None
        if http:
            port = http.get("port")
            port = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == port), port)
            probe = {"path": http.get("path", "/"), "port": port}
        st = pod.get("status") or {}
        hosts = []   # cluster DNS, approximated by /etc/hosts: the Services' names, short in the pod's namespace
        for svc in self.store.list(self._r("Service")):
            ip, m = (svc.get("spec") or {}).get("clusterIP"), svc["metadata"]
            if ip not in (None, "", "None"):
                fq = f"{m['name']}.{m['namespace']}"
                hosts.append((ip, [f"{fq}.svc.cluster.local", f"{fq}.svc", fq] + [m["name"]] * (m["namespace"] == ns)))
        psc, csc = pod["spec"].get("securityContext") or {}, c.get("securityContext") or {}
        security = {k: v for k, v in (("uid", csc.get("runAsUser", psc.get("runAsUser"))),
                                      ("gid", csc.get("runAsGroup", psc.get("runAsGroup")))) if v is not None}
        security["groups"] = [g for g in [psc.get("fsGroup"), *(psc.get("supplementalGroups") or [])] if g is not None]
        out = {"name": c["name"], "image": c["image"], "env": env, "mounts": mounts, "argv": argv, "probe": probe,
               "ip": st.get("podIP", ""), "hostname": pod["metadata"]["name"], "hosts": sorted(hosts),
               "security": security}
        if not init:   # the pod's init containers the node really runs, in order, before this one
            out["init"] = [self._runtime_spec(pod, ic, init=True) for ic in pod["spec"].get("initContainers") or []
                           if process_backed(ic)]
        return out

    def _service_rules(self) -> list[dict]:
        """What kube-proxy programs on every node: each Service port's ClusterIP -> a ready endpoint that
        really runs (runtime.py), as podIP:targetPort (a named targetPort is the container port's name)."""
        from .state import host_config
        rules = []
        for svc in self.store.list(self._r("Service")):
            spec, ns = svc.get("spec") or {}, svc["metadata"]["namespace"]
            if (ns, svc["metadata"]["name"]) == ("default", "kubernetes") and host_config().get("ip"):
                port = spec["ports"][0]   # endpoint: this node's API server (the one the controllers run in)
                rules.append({"ip": spec["clusterIP"], "port": port["port"], "protocol": "TCP",
                              "target": f"{host_config()['ip']}:{port.get('targetPort', port['port'])}"})
                continue
            if spec.get("clusterIP") in (None, "", "None") or not spec.get("selector"):
                continue
            pods = [p for p in self.pods(ns) if selector_dict_match({"matchLabels": spec["selector"]},
                                                                       p["metadata"].get("labels") or {})
                    and _ready(p) and (p.get("status") or {}).get("podIP")
                    and any(process_backed(c) for c in p["spec"]["containers"])]
            for port in spec.get("ports") or []:
                for p in pods[:1]:
                    target = port.get("targetPort", port["port"])
                    if isinstance(target, str):
                        target = next((cp["containerPort"] for c in p["spec"]["containers"]
                                       for cp in c.get("ports") or [] if cp.get("name") == target), None)
                    if target:
                        rules.append({"ip": spec["clusterIP"], "port": port["port"], "target":
                                      f"{p['status']['podIP']}:{target}", "protocol": port.get("protocol", "TCP")})
                        if spec.get("type") in ("NodePort", "LoadBalancer") and port.get("nodePort"):
                            rules.append({"node_port": port["nodePort"], "target": f"{p['status']['podIP']}:{target}",
                                          "protocol": port.get("protocol", "TCP")})
        return rules

    def _workload_status(self) -> None:
        for d in self.store.list(self._r("Deployment", "apps/v1")):
            h = self._hash(d["spec"]["template"])
            pods = [p for p in self.pods(d["metadata"]["namespace"])
                    if (p["metadata"].get("labels") or {}).get("pod-template-hash") == h
                    and selector_dict_match(d["spec"]["selector"], p["metadata"].get("labels") or {})]
            ready = sum(1 for p in pods if _ready(p))
            want = d["spec"].get("replicas", 1)
            avail = ready >= want
            status = {"observedGeneration": d["metadata"].get("generation", 1), "replicas": len(pods),
                      "updatedReplicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                      "unavailableReplicas": max(0, want - ready),
                      "conditions": [{"type": "Available", "status": "True" if avail else "False",
                                      "reason": "MinimumReplicasAvailable" if avail else "MinimumReplicasUnavailable",
                                      "message": "Deployment has minimum availability." if avail else
                                      "Deployment does not have minimum availability."},
                                     {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"
                                      if avail else "ReplicaSetUpdated", "message": ""}]}
            for k in [k for k, v in status.items() if v == 0 and k != "observedGeneration"]:
                status.pop(k)
            self._set_status(d, status)
        for ds in self.store.list(self._r("DaemonSet", "apps/v1")):
            pods = self._owned_pods(ds)
            ready = sum(1 for p in pods if _ready(p))
            self._set_status(ds, {"observedGeneration": ds["metadata"].get("generation", 1),
                                  "desiredNumberScheduled": len(pods), "currentNumberScheduled": len(pods),
                                  "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": len(pods),
                                  "numberMisscheduled": 0, "numberUnavailable": len(pods) - ready})
        for sts in self.store.list(self._r("StatefulSet", "apps/v1")):
            pods = self._owned_pods(sts)
            ready = sum(1 for p in pods if _ready(p))
            self._set_status(sts, {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": len(pods),
                                   "readyReplicas": ready, "currentReplicas": len(pods), "updatedReplicas": len(pods),
                                   "availableReplicas": ready})
        for rs in self.store.list(self._r("ReplicaSet", "apps/v1")):
            pods = self._owned_pods(rs)
            ready = sum(1 for p in pods if _ready(p))
            self._set_status(rs, {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                                  "observedGeneration": rs["metadata"].get("generation", 1)})
        for job in self.store.list(self._r("Job", "batch/v1")):
            pods = self._owned_pods(job)
            ok = sum(1 for p in pods if p.get("status", {}).get("phase") == "Succeeded")
            status = {"active": len(pods) - ok} if not ok else {
                "succeeded": ok, "completionTime": now(),
                "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]}
            if not job.get("status", {}).get("succeeded"):
                self._set_status(job, dict(status, startTime=job.get("status", {}).get("startTime", now())))

    def _set_status(self, obj: dict, status: dict) -> None:
        if obj.get("status") != status:
            obj["status"] = status
            self.store.put_internal(obj)


def _dir_mount(m: dict, host: str) -> dict:
    """A volume backed by a node directory (hostPath, a hostPath PersistentVolume): its subPath below it,
    read-only where the volumeMount says so."""
    if m.get("subPath"):
        host = str(Path(host) / m["subPath"])
    return {"path": m["mountPath"], "kind": "dir", "host": host, "read_only": bool(m.get("readOnly"))}


def expand(text: str, env: dict[str, str]) -> str:
    """A container's command/args: $(VAR) becomes VAR's value when the container has it, else stays as
    written; $$ is a literal $ (Kubernetes third_party/forked/golang/expansion/expand.go)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def service_env(services: list[dict], ns: str, links: bool = True) -> dict[str, str]:
    """The variables a kubelet gives every container for the Services (Kubernetes 1.30
    pkg/kubelet/kubelet_pods.go getServiceEnvVarMap, pkg/kubelet/envvars/envvars.go FromServices): those of
    the pod's namespace when enableServiceLinks (default true), and always the master service `kubernetes` of
    namespace default; only Services with a ClusterIP. The container's own env wins over these."""
    chosen: dict[str, dict] = {}
    for svc in services:
        spec, meta = svc.get("spec") or {}, svc["metadata"]
        if spec.get("clusterIP") in (None, "", "None"):
            continue
        if meta.get("namespace") == "default" and meta["name"] == "kubernetes":
            chosen.setdefault(meta["name"], svc)
        elif meta.get("namespace") == ns and links:
            chosen[meta["name"]] = svc
    env: dict[str, str] = {}
    for name, svc in sorted(chosen.items()):
        spec, prefix = svc["spec"], name.upper().replace("-", "_")
        ports, ip = spec.get("ports") or [], spec["clusterIP"]
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        proto0 = ports[0].get("protocol", "TCP").lower()
        env[f"{prefix}_PORT"] = f"{proto0}://{ip}:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            var = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
            env.update({var: f"{proto.lower()}://{ip}:{p['port']}", f"{var}_PROTO": proto.lower(),
                        f"{var}_PORT": str(p["port"]), f"{var}_ADDR": ip})
    return env


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))

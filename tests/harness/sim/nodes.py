"""Bootstrap of a fresh control plane's objects and Node registration (what kubelite, the install hook,
the reconcile hook and the cluster agent do on a real node)."""

from __future__ import annotations

import os

from . import addons, paths
from .store import Store, now


def node_object(name: str, ip: str, worker: bool) -> dict:
    role = ("node.kubernetes.io/microk8s-worker", "microk8s-worker") if worker else \
        ("node.kubernetes.io/microk8s-controlplane", "microk8s-controlplane")
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                "microk8s.io/cluster": "true", role[0]: role[1]},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                       "message": "container runtime network not ready",
                                       "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": paths.KUBELET_PORT}}}}


def register_node(store: Store, name: str, ip: str, worker: bool) -> None:
    res = store.kind("Node")
    if store.find(res, "", name) is None:
        store.put_internal(node_object(name, ip, worker))
        store.save()


def bootstrap(store: Store, cfg: dict) -> None:
    """First start: namespaces, service/kubernetes, this node, Calico (90-calico-apply, once)."""
    ns_res = store.kind("Namespace")
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        if store.find(ns_res, "", ns) is None:
            store.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"}})
    svc = store.kind("Service")
    if store.find(svc, "default", "kubernetes") is None:
        store.put_internal({"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.152.183.1", "type": "ClusterIP",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": paths.API_PORT}]}})
    register_node(store, cfg["name"], cfg["ip"], worker=False)
    lock = os.path.join(paths.LOCKS, "cni-loaded")
    if not os.path.exists(lock):
        for obj in addons.calico():
            _create(store, obj)
        open(lock, "w").close()
    store.save()   # dns: the cluster agent enables it later, from the launch configuration (daemon.py)


def _create(store: Store, obj: dict) -> None:
    res = store.kind(obj["kind"], obj["apiVersion"])
    if store.find(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) is None:
        store.create(res, obj["metadata"].get("namespace", ""), obj)


def write_dqlite_cluster(voters: list[str]) -> None:
    """$SNAP_DATA/var/kubernetes/backend/cluster.yaml as go-dqlite's node store writes it (one `Address`,
    `ID`, `Role` entry per member, Role 0 = voter; the layout users paste in canonical/microk8s#3448): what
    `microk8s leave` / `remove-node` / `status` read through `dqlite .cluster`. The first node keeps dqlite's
    bootstrap ID."""
    import hashlib
    from pathlib import Path
    d = Path(paths.DQLITE_DIR)
    d.mkdir(parents=True, exist_ok=True)
    out = ""
    for i, ip in enumerate(voters):
        nid = 3297041220608546238 if i == 0 else int(hashlib.sha256(ip.encode()).hexdigest()[:15], 16)
        out += f"- Address: {ip}:{paths.DQLITE_PORT}\n  ID: {nid}\n  Role: 0\n"
    (d / "cluster.yaml").write_text(out)

"""Stage 40: CoreDNS with a local upstream, and storage that fits the cluster's size.

DNS: CoreDNS forwards to the servers stages/_dns.py picks (DNS_SERVERS_CSV, else the node's own
non-loopback resolvers, never a public one); preflight already refused a node with none, before any
change, and this stage applies the same rule.

Storage: a single node gets the hostpath-storage addon (the hub database needs a default
StorageClass), with reclaim policy Retain so that user and hub volumes outlive their claims. User homes on
several nodes must be shared, or a user's files vanish when their server lands elsewhere: with
SHARED_STORAGE_ENABLED a static ReadWriteMany PV + PVC (hostPath mounted on every node, or NFS) is created,
and a multi-node cluster without it, or with a hostPath on a local disk, is refused. Manifests are built as data and validated with kubernetes-validate --strict in the tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import ConflictError
from provision.jupyterhub import HOMES_PVC
from provision.stage import Action, ApplyContext, Check, Node, Plan, RunCommand, Scope, Stage
from stages import _dns as D
from stages import _microk8s as M

SHARED_PV = HOMES_PVC  # PV and PVC name; stage 70 mounts the claim with subPath home/{username}
PUBLIC_RESOLVERS = D.PUBLIC_RESOLVERS
LOCAL_FS = frozenset({"ext2/ext3", "ext4", "ext2", "ext3", "xfs", "btrfs", "zfs", "tmpfs", "overlayfs", "overlay",
                      "f2fs", "vfat", "msdos", "ramfs"})
_FORWARD_RE = re.compile(r"^(?P<i>[ \t]*)forward[ \t]+\.[ \t]+(?P<up>[^{\n]*?)(?P<tail>[ \t]*\{[ \t]*)?$",
                         re.MULTILINE)


class DnsStorage(Stage):
    """CoreDNS forwarding to site resolvers; hostpath-storage (1 node) or a shared PV + PVC."""

    number = 40
    title = "DNS and storage"
    scope = Scope.CLUSTER

    def gather(self, host: Any, settings: Any, node: Node) -> Mapping[str, Any]:
        return F.gather(host, probes(settings), sudo=True)

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return plan(facts, settings, node)

    def admits(self, settings: Any, node_count: int) -> str | None:
        """Before nodes join an installed cluster: what this stage would refuse with that many nodes."""
        problem = nodes_problem(settings, node_count)
        return f"{problem.message} — {problem.hint}" if problem else None

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        return verify(facts, settings, node)



def parse_shared_path(raw: F.Raw) -> dict[str, Any]:
    f = raw.out.split()
    return {"exists": raw.ok and bool(f), "fstype": f[0] if f else ""}


def probes(settings: Any) -> list[F.Probe]:
    out = [M.installed,
           F.resolv,
           M.kube_probe("coredns_cm", "configmap", "coredns", "-n", "kube-system"),
           M.kube_probe("pods", "pods", "-n", "kube-system"),
           M.kube_probe("nodes", "nodes"),
           M.kube_probe("pv", "pv", SHARED_PV),
           M.kube_probe("pvc", "pvc", SHARED_PV, "-n", settings.hub_namespace)]
    if settings.shared_storage_enabled and settings.shared_storage_type == "hostpath" and settings.shared_storage_path:
        out.append(F.Probe("shared_path", F.quoted("[ -d {p} ] || exit 1\nstat -f -c %T -- {p}",
                                                   p=settings.shared_storage_path), parse_shared_path))
    return out


# ---------------------------------------------------------------------------------------------
# DNS


parse_resolv = F.parse_resolv  # the probe lives in provision.facts; preflight gathers it too


def upstream_servers(facts: Mapping[str, Any], settings: Any, node: Node) -> list[str]:
    """The servers CoreDNS must forward to (stages/_dns.py: the rule preflight checks first)."""
    return D.upstream_servers(facts, settings, node.name)


def corefile_upstreams(corefile: str) -> list[str] | None:
    m = _FORWARD_RE.search(corefile)
    return m.group("up").split() if m else None


def set_corefile_upstreams(corefile: str, servers: Sequence[str]) -> str:
    if not _FORWARD_RE.search(corefile):
        raise ConflictError("the CoreDNS Corefile has no `forward .` line",
                            "it was edited by hand; `microk8s disable dns && microk8s enable dns:SERVERS` "
                            "restores the MicroK8s one")
    return _FORWARD_RE.sub(lambda m: f"{m.group('i')}forward . {' '.join(servers)}{m.group('tail') or ''}",
                           corefile, count=1)


def coredns_configmap(live: Mapping[str, Any], corefile: str) -> dict[str, Any]:
    """The live ConfigMap with only its Corefile replaced (labels kept, so kubectl apply removes nothing)."""
    meta = live.get("metadata") or {}
    out_meta: dict[str, Any] = {"name": "coredns", "namespace": "kube-system"}
    if meta.get("labels"):
        out_meta["labels"] = dict(meta["labels"])
    data = dict(live.get("data") or {})
    data["Corefile"] = corefile
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": out_meta, "data": data}


def corefile_actions(cm: Mapping[str, Any], servers: Sequence[str]) -> list[Action]:
    """Point the live Corefile's `forward .` at `servers` (nothing when it already does)."""
    corefile = (cm.get("data") or {}).get("Corefile", "")
    if corefile_upstreams(corefile) == list(servers):
        return []
    new = set_corefile_upstreams(corefile, servers)
    out: list[Action] = [M.KubectlApply(M.to_yaml(coredns_configmap(cm, new)),
                                        f"CoreDNS Corefile forwarding to {', '.join(servers)}")]
    if not re.search(r"^\s*reload\b", corefile, re.MULTILINE):
        out.append(RunCommand(M.kubectl("-n", "kube-system", "rollout", "restart", "deployment/coredns"),
                              "restart CoreDNS (its Corefile has no reload plugin)"))
    return out


@dataclass(frozen=True)
class EnableDns(Action):
    """`microk8s enable dns:SERVERS`, then make sure the Corefile really forwards to SERVERS.

    On a fresh node MicroK8s' cluster agent enables dns by itself, asynchronously, from its default launch
    configuration (a 5 s loop once the API is up), forwarding to the host's resolvers or 8.8.8.8 (microk8s.md
    §6). When its enable lands between this stage's gather and this action, ours only says "Addon core/dns is
    already enabled" and exits 0 (both are serialised by the addon lock), so the Corefile is checked after."""

    servers: tuple[str, ...]

    def describe(self) -> str:
        return f"enable CoreDNS forwarding to {', '.join(self.servers)}"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        host.run(list(M.mk("enable", "dns:" + ",".join(self.servers))), sudo=True, timeout=300)
        cm = M.kube_get(host, "configmap", "coredns", "-n", "kube-system")
        if cm is None:
            raise ConflictError("`microk8s enable dns` returned but the CoreDNS ConfigMap cannot be read",
                                "check `microk8s kubectl -n kube-system get configmap coredns`, then re-run")
        for action in corefile_actions(cm, self.servers):
            action.apply(host, ctx)


# ---------------------------------------------------------------------------------------------
# Storage


def node_count(facts: Mapping[str, Any]) -> int | None:
    nodes = facts.get("nodes")
    return None if nodes is None else len(nodes.get("items") or [])


def volume_source(settings: Any) -> dict[str, Any]:
    if settings.shared_storage_type == "nfs":
        return {"nfs": {"server": settings.nfs_server, "path": settings.shared_storage_path}}
    # Directory (not DirectoryOrCreate): a missing mount fails the pod instead of filling the local disk
    return {"hostPath": {"path": settings.shared_storage_path, "type": "Directory"}}


def shared_storage_docs(settings: Any) -> list[dict[str, Any]]:
    """Namespace, PersistentVolume and PersistentVolumeClaim for shared user homes, as data."""
    ns = settings.hub_namespace
    labels = {"app.kubernetes.io/managed-by": "provision", "app.kubernetes.io/part-of": "jupyterhub"}
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": SHARED_PV, "labels": labels},
          "spec": {"capacity": {"storage": settings.pvc_size}, "accessModes": ["ReadWriteMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "volumeMode": "Filesystem", **volume_source(settings)}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": SHARED_PV, "namespace": ns, "labels": labels},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": SHARED_PV,
                    "volumeMode": "Filesystem", "resources": {"requests": {"storage": settings.pvc_size}}}}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, pv, pvc]


def _source_of(pv: Mapping[str, Any]) -> dict[str, Any]:
    spec = pv.get("spec") or {}
    if "nfs" in spec:
        return {"nfs": {"server": spec["nfs"].get("server"), "path": spec["nfs"].get("path")}}
    if "hostPath" in spec:
        return {"hostPath": {"path": spec["hostPath"].get("path"), "type": spec["hostPath"].get("type", "")}}
    return {"other": sorted(k for k in spec if k not in ("capacity", "accessModes", "claimRef"))}


def _same_size(quantity: str | None, other: str) -> bool:
    from provision.config import size_bytes

    try:
        return quantity is not None and size_bytes(str(quantity)) == size_bytes(other)
    except (ValueError, TypeError):
        return False


def refuse_claim_resize(pvc: Mapping[str, Any], settings: Any) -> None:
    """PVC_SIZE must equal the claim's request, or stage 40 would apply half a change: Kubernetes lets the
    static PV's capacity be edited but refuses the claim's new request (a claim never shrinks, and grows only
    when bound through a StorageClass with allowVolumeExpansion; ours is static, storageClassName "").
    So refuse before changing anything. The request is a label: users get the shared filesystem's space."""
    from provision.config import size_bytes

    have = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    if have is None or _same_size(have, settings.pvc_size):
        return
    ns = settings.hub_namespace
    grow = size_bytes(settings.pvc_size) > size_bytes(str(have))
    why = ("Kubernetes resizes only claims whose StorageClass allows volume expansion, and this one is bound to "
           "a static PersistentVolume" if grow else "Kubernetes never shrinks a claim")
    raise ConflictError(f"PVC_SIZE={settings.pvc_size} but the claim {ns}/{SHARED_PV} requests {have}; {why}, "
                        "so nothing was changed",
                        f"set PVC_SIZE={have} in jhub.env again (the space users get is the free space of "
                        f"{settings.shared_storage_path or 'the shared filesystem'}, not PVC_SIZE); to record a new "
                        f"size, stop the user servers, `microk8s kubectl delete pvc -n {ns} {SHARED_PV}; microk8s "
                        f"kubectl delete pv {SHARED_PV}` (the files stay: reclaim policy Retain), then re-run")


def nodes_problem(settings: Any, n: int) -> ConflictError | None:
    """Why a cluster of n nodes cannot keep user homes as configured (a multi-node cluster needs shared storage),
    or None. Also asked by `node add` before a node joins (the stage's optional `admits`)."""
    if n > 1 and not settings.shared_storage_enabled:
        return ConflictError(f"the cluster has {n} nodes but SHARED_STORAGE_ENABLED=false: user homes would be "
                             "node-local and a user's files would vanish when their server starts on another node",
                             "set SHARED_STORAGE_ENABLED=true and SHARED_STORAGE_PATH (a CephFS/NFS mount on every "
                             "node, or SHARED_STORAGE_TYPE=nfs with NFS_SERVER), then re-run")
    return None


def storage_actions(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Action]:
    n = node_count(facts)
    if n is None:
        raise ConflictError(f"{node.name}: the Kubernetes API does not answer", "check `microk8s status`, "
                            "then re-run (stage 30 waits for the network first)")
    actions: list[Action] = []
    addons = M.addons_from_pods(facts.get("pods"))
    if n == 1 and addons["hostpath-storage"] != "enabled":
        # Retain: a deleted claim (helm uninstall, namespace deletion) never takes the hub database or a home with it
        actions.append(RunCommand(M.mk("enable", "hostpath-storage", "--reclaim-policy=Retain"),
                                  "enable hostpath-storage (default StorageClass for a single node; reclaim "
                                  "policy Retain)", timeout=300))
    if not settings.shared_storage_enabled:
        problem = nodes_problem(settings, n)
        if problem:
            raise problem
        return actions
    if settings.shared_storage_type == "hostpath":
        sp = facts.get("shared_path") or {}
        if not sp.get("exists"):
            raise ConflictError(f"{node.name}: SHARED_STORAGE_PATH {settings.shared_storage_path} does not exist",
                                "mount the shared filesystem there on every node (or create the directory on a "
                                "single node), then re-run")
        if n > 1 and sp.get("fstype") in LOCAL_FS:
            raise ConflictError(f"SHARED_STORAGE_PATH {settings.shared_storage_path} is on a local "
                                f"{sp.get('fstype')} filesystem of {node.name}, but the cluster has {n} nodes: "
                                "homes would be node-local", "mount CephFS/NFS at that path on every node, or "
                                "use SHARED_STORAGE_TYPE=nfs with NFS_SERVER, then re-run")
    docs = shared_storage_docs(settings)
    pv, pvc = facts.get("pv"), facts.get("pvc")
    if pv is not None and _source_of(pv) != volume_source(settings):
        raise ConflictError(f"PersistentVolume {SHARED_PV} already points at {_source_of(pv)}, the settings say "
                            f"{volume_source(settings)}; changing it would move every user's home",
                            f"move the data, then `microk8s kubectl delete pvc -n {settings.hub_namespace} "
                            f"{SHARED_PV}; microk8s kubectl delete pv {SHARED_PV}` and re-run")
    if pvc is not None:
        refuse_claim_resize(pvc, settings)
    pv_size = ((pv or {}).get("spec") or {}).get("capacity", {}).get("storage")
    pvc_spec = (pvc or {}).get("spec") or {}
    if (pv is None or pvc is None or not _same_size(pv_size, settings.pvc_size)
            or pvc_spec.get("volumeName") != SHARED_PV):
        actions.append(M.KubectlApply(M.to_yaml(*docs), f"shared storage PV + PVC {SHARED_PV} "
                                      f"({settings.pvc_size}, {next(iter(volume_source(settings)))} "
                                      f"{settings.shared_storage_path}) in namespace {settings.hub_namespace}"))
    return actions


# ---------------------------------------------------------------------------------------------


def plan(facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
    st = facts.get("status") or {}
    if not st.get("installed"):
        raise ConflictError(f"{node.name}: MicroK8s is not installed", "stage 10 installs it: run "
                            "`provision install` without --only/--from")
    servers = upstream_servers(facts, settings, node)
    actions: list[Action] = []
    cm = facts.get("coredns_cm")
    addons = M.addons_from_pods(facts.get("pods"))
    if addons["dns"] != "enabled" or cm is None:
        actions.append(EnableDns(tuple(servers)))
    else:
        actions += corefile_actions(cm, servers)
    if actions or M.not_ready_pods(facts.get("pods"), None, "coredns-", per_node=False):
        actions.append(M.WaitPods("kube-system", "coredns-", False, float(settings.wait_timeout), "CoreDNS"))
    storage = storage_actions(facts, settings, node)
    actions += storage
    if any(isinstance(a, RunCommand) and "hostpath-storage" in a.argv for a in storage) or (
            node_count(facts) == 1 and M.not_ready_pods(facts.get("pods"), None, "hostpath-provisioner-", False)):
        actions.append(M.WaitPods("kube-system", "hostpath-provisioner-", False, float(settings.wait_timeout),
                                  "the hostpath provisioner"))
    if not actions:
        return Plan.noop(f"CoreDNS forwards to {', '.join(servers)}; storage in place")
    return Plan(tuple(actions))


def verify(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    cm = facts.get("coredns_cm") or {}
    ups = corefile_upstreams((cm.get("data") or {}).get("Corefile", "")) or []
    # a public resolver only when DNS_SERVERS_CSV names it (MicroK8s' own dns enable falls back to 8.8.8.8)
    public = [u for u in ups if u in PUBLIC_RESOLVERS and u not in (settings.dns_servers_csv or ())]
    checks = [Check("CoreDNS upstream is not a public resolver", not public,
                    f"forwards to {' '.join(ups) or 'nothing'}", "set DNS_SERVERS_CSV"),
              Check("CoreDNS ready", not M.not_ready_pods(facts.get("pods"), None, "coredns-", False),
                    hint="microk8s kubectl -n kube-system describe pod -l k8s-app=kube-dns")]
    n = node_count(facts) or 0
    addons = M.addons_from_pods(facts.get("pods"))
    if n == 1:
        checks.append(Check("hostpath-storage enabled", addons.get("hostpath-storage") == "enabled"))
    elif addons.get("hostpath-storage") == "enabled":
        checks.append(Check("hostpath-storage on a multi-node cluster", False,
                            "volumes it provisions live on one node only", "use the shared PV for user data",
                            warning=True))
    if settings.shared_storage_enabled:
        pvc = facts.get("pvc") or {}
        phase = (pvc.get("status") or {}).get("phase", "missing")
        checks.append(Check(f"PVC {SHARED_PV} bound", phase == "Bound", phase,
                            f"microk8s kubectl -n {settings.hub_namespace} describe pvc {SHARED_PV}", warning=True))
    return checks

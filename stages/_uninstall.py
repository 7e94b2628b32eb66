"""`provision uninstall`: the facts (one read-only round trip per node) and the plan (pure), as frozen actions.

What is removed, in this order (wave2-anchors.md §4: k0sctl reset's order, TLJH's list of reverts):
1. on top of MicroK8s (control node): user volumes' PVs patched to reclaim policy Retain first (a cluster
   installed before stage 40 enabled hostpath-storage with Retain has a Delete StorageClass, and helm
   uninstall / namespace deletion would then delete the hub database and the homes); the releases (jhub, then
   network-operator, gpu-operator); the hub namespace's pods stopped; hostpath-storage volumes of the hub
   namespace moved out of the snap's tree to KEPT_DIR (a rename: same filesystem, bytes untouched) with a record
   (stages/_data.py) that a re-install turns into PVs bound to the same claims; the Ascend device plugin, its
   node labels, the smoke record, the operators' namespaces; the Nginx site, the NodePort firewall rule, the
   port-forward and usage-portal units (the portal's database in /var/lib/provision is kept).
2. unless --keep-cluster, per node, workers first and the control plane last: `microk8s stop`, every mount
   under /var/snap/microk8s/common and the kubelet's root unmounted deepest first (k0s#4318 deleted data on
   mounted volumes by deleting first), `snap remove --purge microk8s` (only once data is safe: without --purge
   snapd snapshots the whole common/ dir, PVs included, and can hang), the links MicroK8s left (dangling
   /var/lib/kubelet & co., cni0, vxlan.calico). Never `microk8s reset` (microk8s#4297 wipes hostpath data).
Kept always: shared storage and workshop paths (never touched, even with --delete-data: they are the
admin's mounts). --delete-data: hostpath volumes and KEPT_DIR are deleted instead of kept.

Each action is idempotent and planned from facts, so an interrupted uninstall converges when re-run.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision import facts as F
from provision.errors import EXIT_REFUSED, ProvisionError
from provision.stage import Action, ApplyContext, Check, RunCommand
from stages import _data as D
from stages._microk8s import kubectl, mk
from stages.s80_access import RemoveNginxSite

SNAP_TREE = "/var/snap/microk8s"
SNAP_COMMON = f"{SNAP_TREE}/common"
KUBELET_LINK = "/var/lib/kubelet"  # → SNAP_COMMON/var/lib/kubelet (microk8s.md §8)
UNMOUNT_ROOTS = (SNAP_COMMON, KUBELET_LINK)
SNAP_LINKS = (KUBELET_LINK, "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/calico")  # the snap's hooks make them
NET_LINKS = ("cni0", "vxlan.calico")
RELEASES = (  # (release, namespace) in the order they go; jhub's namespace is settings.hub_namespace
    ("network-operator", "nvidia-network-operator"), ("gpu-operator", "gpu-operator"))
SMOKE = ("kube-system", "provision-smoke")  # stage 60's record ConfigMap
SMOKE_NS = "provision-smoke"
ASCEND_DS = ("kube-system", "ascend-device-plugin-daemonset")
ASCEND_LABEL = "accelerator"
MANAGED = "app.kubernetes.io/managed-by"
PORT_FORWARD_UNIT = "provision-port-forward.service"
USAGE_PORTAL_UNIT = "provision-usage-portal.service"  # stage 75; its database (/var/lib/provision) is kept
USAGE_DB = "/var/lib/provision/usage.db"
UNITS = {PORT_FORWARD_UNIT: "the port-forward unit", USAGE_PORTAL_UNIT: "the usage portal"}
EXIT_UNMOUNT = 12  # Unmount's script: a mount would not go


# ---------------------------------------------------------------------------------------------
# Facts


def parse_mountinfo(text: str) -> list[str]:
    """Mount points from /proc/self/mountinfo (field 5, octal escapes such as \\040 decoded)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5:
            out.append(f[4].encode("latin-1").decode("unicode_escape"))
    return out


def under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots if r)


def parse_node(raw: F.Raw) -> dict[str, Any]:
    """UNINSTALL_NODE's JSON."""
    start = raw.out.find("{")
    try:
        return json.loads(raw.out[start:]) if start >= 0 else {}
    except ValueError:
        return {}


# Run as root on every node: the snap, the links the snap made, the network links, every mount point, the
# units provision installed; printed as one JSON object.
NODE_PY = r"""
import json, os, subprocess, sys
links = {}
for p in sys.argv[1].split(","):
    if os.path.islink(p):
        links[p] = {"target": os.readlink(p), "dangling": not os.path.exists(p)}
net = [n for n in sys.argv[2].split(",") if os.path.exists("/sys/class/net/" + n)]
try:
    snap = subprocess.run(["snap", "list", "microk8s"], capture_output=True, timeout=60).returncode == 0
except (OSError, subprocess.SubprocessError):
    snap = False
with open("/proc/self/mountinfo") as f:
    mountinfo = f.read()
print(json.dumps({"snap": snap, "links": links, "net": net, "mountinfo": mountinfo,
                  "kubelet_root": os.path.realpath(sys.argv[3]),
                  "units": [u for u in sys.argv[4].split(",") if os.path.exists("/etc/systemd/system/" + u)],
                  "microk8s": os.path.exists("/snap/bin/microk8s")}))
"""


def node_probe() -> F.Probe:
    return F.Probe("node", "command -v python3 >/dev/null 2>&1 || exit 127\n" + F.quoted(
        "timeout 90 python3 -c {py} {links} {net} {kubelet} {unit}", py=NODE_PY, links=",".join(SNAP_LINKS),
        net=",".join(NET_LINKS), kubelet=KUBELET_LINK, unit=",".join(UNITS)), parse_node)


def parse_releases(raw: F.Raw) -> list[dict[str, str]] | None:
    if not raw.ok:
        return None
    start = raw.out.find("[")
    try:
        items = json.loads(raw.out[start:]) if start >= 0 else []
    except ValueError:
        return None
    return [{"name": str(r.get("name")), "namespace": str(r.get("namespace"))} for r in items or []]


def control_probes(settings: Any) -> list[F.Probe]:
    """The cluster's side, on the control node (absent objects and a down API read as None)."""
    from stages._microk8s import kube_probe
    from stages.s80_access import AccessStage

    pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
    access = [p for p in AccessStage().probes(settings) if p.name in ("ufw", "firewalld", "nginx")]
    return [F.Probe("releases", pre + "timeout 60 microk8s helm3 list -A --all -o json", parse_releases),
            kube_probe("namespaces", "namespaces"),
            kube_probe("nodes", "nodes"),
            kube_probe("ascend_ds", "daemonset", ASCEND_DS[1], "-n", ASCEND_DS[0]),
            kube_probe("smoke_cm", "configmap", SMOKE[1], "-n", SMOKE[0]),
            kube_probe("hub_pods", "pods", "-n", settings.hub_namespace),
            D.probe(settings),
            *access]


def gather(host: Any, settings: Any, control: bool) -> dict[str, Any]:
    """Every fact the plan reads, in one round trip (the control node's include the cluster's)."""
    probes = [node_probe(), *(control_probes(settings) if control else [])]
    facts = dict(F.gather(host, probes, sudo=True))
    node = facts.pop("node") or {}
    facts.update(node)
    facts["mounts"] = parse_mountinfo(node.get("mountinfo", ""))
    facts.pop("mountinfo", None)
    return facts


def mounts_to_unmount(facts: Mapping[str, Any]) -> list[str]:
    """Mount points under the snap's common dir and the kubelet's root (through its link), deepest first."""
    roots = [*UNMOUNT_ROOTS, facts.get("kubelet_root") or ""]
    found = {m for m in facts.get("mounts") or [] if under(m, roots)}
    return sorted(found, key=lambda m: (-m.count("/"), m))


# ---------------------------------------------------------------------------------------------
# Actions (only the command's apply loop runs them)


@dataclass(frozen=True)
class Unmount(Action):
    """Unmount every mount under the roots, deepest first, re-reading /proc/self/mountinfo (mounts stacked on
    one point need one umount each). One that will not go stops the uninstall before anything is deleted."""

    roots: tuple[str, ...]
    seen: tuple[str, ...]  # what the gather found (shown in the plan)

    def describe(self) -> str:
        return f"unmount {len(self.seen)} mount(s) under {', '.join(self.roots)} (deepest first): " + \
            ", ".join(self.seen[:5]) + (" …" if len(self.seen) > 5 else "")

    def script(self) -> str:
        roots = " ".join(shlex.quote(r) for r in self.roots)
        return f"""set -u
i=0
while [ $i -lt 500 ]; do
  i=$((i+1))
  m=$(python3 -c {shlex.quote(DEEPEST_PY)} {roots}) || exit 1
  [ -n "$m" ] || exit 0
  if ! out=$(umount -- "$m" 2>&1); then printf '%s\\n%s\\n' "$m" "$out" >&2; exit {EXIT_UNMOUNT}; fi
done
exit {EXIT_UNMOUNT}
"""

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        r = host.run(["sh", "-c", self.script()], sudo=True, timeout=300, check=False)
        if r.exit_status == 0:
            return
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("provision-sid:")]
        what = lines[0] if lines else "a mount"
        why = " ".join(lines[1:])[-300:] or f"exit {r.exit_status}"
        raise ProvisionError(f"{host.name}: cannot unmount {what} ({why}); MicroK8s and the data were left "
                             "on this node", f"find what uses it (`sudo fuser -vm {what}`), stop it, then "
                             "re-run `provision uninstall`")


# The deepest mount point under the roots (argv), or an empty line: /proc/self/mountinfo read afresh each time.
DEEPEST_PY = r"""
import sys
roots = [r.rstrip("/") for r in sys.argv[1:] if r]
pts = []
for line in open("/proc/self/mountinfo"):
    p = line.split()[4].encode("latin-1").decode("unicode_escape")
    if any(p == r or p.startswith(r + "/") for r in roots):
        pts.append(p)
pts.sort(key=lambda p: -p.count("/"))
print(pts[0] if pts else "")
"""


# Run as root on the control node: argv[1] = JSON {"record": KEPT_RECORD, "entries": [record...], "src": {dir: src}}.
KEEP_PY = r"""
import json, os, sys
a = json.loads(sys.argv[1])
kept_dir = os.path.dirname(a["record"])
os.makedirs(kept_dir, mode=0o700, exist_ok=True)
for src in a["src"].values():
    if os.path.isdir(src) and os.stat(src).st_dev != os.stat(kept_dir).st_dev:
        sys.stderr.write(f"{src} and {kept_dir} are on different filesystems\n")
        sys.exit(13)
try:
    with open(a["record"]) as f:
        old = json.load(f)
except FileNotFoundError:
    old = []
key = lambda r: (r.get("namespace"), r.get("claim"))
new = {key(r): r for r in old}
for r in a["entries"]:
    new[key(r)] = r
tmp = a["record"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(list(new.values()), f, indent=2)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, a["record"])  # the record first: a run stopped between the two finds it and moves the rest
for dst, src in a["src"].items():
    if os.path.isdir(src) and not os.path.exists(dst):
        os.rename(src, dst)
        print(f"moved {src} -> {dst}")
"""


@dataclass(frozen=True)
class KeepVolumes(Action):
    """Move hostpath-storage volumes out of the snap's tree (rename: contents, owners and modes unchanged) and
    record which namespace/claim each held, so a re-install binds them again (stages/_data.kept_pvs)."""

    entries: tuple[str, ...]  # JSON of each record (frozen-friendly)
    sources: tuple[tuple[str, str], ...]  # (kept dir, current dir)

    def describe(self) -> str:
        moves = [f"{s} -> {d}" for d, s in self.sources if s != d]
        stay = [s for d, s in self.sources if s == d]
        return "keep the hub database and user volumes: " + "; ".join(
            [*(["move " + "; ".join(moves)] if moves else []), *(["keep in place " + ", ".join(stay)] if stay else [])]
        ) + f" (recorded in {D.KEPT_RECORD} for a re-install)"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        arg = json.dumps({"record": D.KEPT_RECORD, "entries": [json.loads(e) for e in self.entries],
                          "src": dict(self.sources)})
        r = host.run(["python3", "-c", KEEP_PY, arg], sudo=True, timeout=300, check=False)
        if r.exit_status == 13:
            raise ProvisionError(f"{host.name}: {r.stderr.strip().splitlines()[-1]}: the volumes cannot be moved "
                                 "by a rename, so nothing was moved or removed",
                                 f"copy them yourself (`provision backup`), or make {D.KEPT_DIR} a directory on "
                                 f"the filesystem of {SNAP_COMMON}, then re-run")
        if r.exit_status:
            raise ProvisionError(f"{host.name}: could not move the volumes to {D.KEPT_DIR}: "
                                 f"{(r.stderr.strip().splitlines() or ['exit ' + str(r.exit_status)])[-1]}",
                                 "fix what it names, then re-run `provision uninstall` (nothing was removed yet)")


@dataclass(frozen=True)
class WaitPodsGone(Action):
    """Wait until the hub namespace has no pod left (hub, proxy, user servers): nothing writes the volumes."""

    namespace: str
    timeout: float

    def describe(self) -> str:
        return f"wait until no pod runs in namespace {self.namespace} (at most {self.timeout:.0f}s)"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        from stages._cluster import get_json
        from stages._microk8s import poll_until

        left = ["the API does not answer"]

        def gone() -> bool:
            nonlocal left
            pods = get_json(host, "pods", "-n", self.namespace)
            left = [p["metadata"]["name"] for p in (pods or {}).get("items") or []] if pods is not None else left
            return pods is not None and not left

        if not poll_until(ctx, self.timeout, 2.0, f"the pods in {self.namespace} to go", gone):
            raise ProvisionError(f"pods still run in namespace {self.namespace} after {self.timeout:.0f}s: "
                                 f"{', '.join(left[:5])}",
                                 f"check `microk8s kubectl get pods -n {self.namespace}`, then re-run")


@dataclass(frozen=True)
class RemoveSite(RemoveNginxSite):
    """Stage 80's removal of its own Nginx site (fixed paths: only what provision wrote), as uninstall says it."""

    def describe(self) -> str:
        from stages.s80_access import CERT, KEY, SITE, SITE_LINK

        return f"remove the Nginx site provision installed ({SITE_LINK}, {SITE}, {CERT}, {KEY}) and reload nginx"


@dataclass(frozen=True)
class RemoveLinks(Action):
    """Dangling links into the removed snap, and the network links Calico/MicroK8s left."""

    paths: tuple[str, ...]
    net: tuple[str, ...]

    def describe(self) -> str:
        return "remove what MicroK8s left: " + ", ".join([*(f"link {p} (into the snap)" for p in self.paths),
                                                          *(f"network link {n}" for n in self.net)])

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        for p in self.paths:
            host.run(["rm", "-f", "--", p], sudo=True, timeout=30)
        for n in self.net:
            r = host.run(["ip", "link", "delete", n], sudo=True, timeout=30, check=False)
            if r.exit_status and "Cannot find device" not in r.stderr:
                raise ProvisionError(f"{host.name}: `ip link delete {n}` failed: {r.stderr.strip()[-200:]}",
                                     f"remove it by hand (`sudo ip link delete {n}`) or reboot the node")


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Options:
    keep_cluster: bool = False
    delete_data: bool = False


@dataclass(frozen=True)
class Step:
    """One action on one node. phase: cluster (control node, first), worker (in parallel), control (last)."""

    node: str
    action: Action
    phase: str = "cluster"


@dataclass
class UninstallPlan:
    steps: list[Step] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # what goes, for the PLAN (node: thing)
    kept: list[str] = field(default_factory=list)     # what stays, with paths and sizes
    deleted: list[str] = field(default_factory=list)  # data deleted (only with --delete-data)
    after: list[str] = field(default_factory=list)    # what the admin may do afterwards

    @property
    def empty(self) -> bool:
        return not self.steps


def _names(obj: Mapping[str, Any] | None) -> list[str]:
    return [i["metadata"]["name"] for i in (obj or {}).get("items") or []]


def _hub_pvs(data: Mapping[str, Any] | None, ns: str) -> list[dict[str, Any]]:
    """PVs bound to the hub namespace's data claims (hub-db-dir, claim-*, jhub-homes)."""
    out = []
    for pv in ((data or {}).get("pv") or {}).get("items") or []:
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref.get("namespace") == ns and D.claim_kind(str(ref.get("name", ""))):
            out.append(pv)
    return out


def _in_snap(path: str) -> bool:
    return under(path, (SNAP_TREE,))


def cluster_steps(facts: Mapping[str, Any], settings: Any, node: str, opts: Options, p: UninstallPlan) -> None:
    """What provision deployed on top of MicroK8s (control node)."""
    from provision.jupyterhub import RELEASE
    from stages.s80_access import CERT, KEY, SITE, SITE_LINK

    ns = settings.hub_namespace
    releases = facts.get("releases")
    api = facts.get("namespaces") is not None and releases is not None
    data = facts.get("data") or {}
    pvs = _hub_pvs(data, ns)
    if api:
        if not opts.delete_data:
            loose = [pv["metadata"]["name"] for pv in pvs
                     if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Retain"]
            for name in loose:
                p.steps.append(Step(node, RunCommand(
                    kubectl("patch", "pv", name, "-p", '{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}'),
                    f"set reclaim policy Retain on PV {name} before its claim goes", timeout=60)))
        present = {(r["name"], r["namespace"]) for r in releases or []}
        for rel, rns in ((RELEASE, ns), *RELEASES):
            if (rel, rns) in present:
                p.steps.append(Step(node, RunCommand(mk("helm3", "uninstall", rel, "-n", rns, "--timeout", "300s"),
                                                     f"uninstall helm release {rel} (namespace {rns})", timeout=360)))
                p.removed.append(f"{node}: helm release {rel} (namespace {rns})")
        hub_pods = _names(facts.get("hub_pods"))
        if hub_pods:
            p.steps.append(Step(node, RunCommand(kubectl("delete", "pods", "--all", "-n", ns, "--ignore-not-found",
                                                         "--wait=false"),
                                                 f"stop the {len(hub_pods)} pod(s) left in namespace {ns} (hub, "
                                                 "proxy, user servers)", timeout=120)))
            p.steps.append(Step(node, WaitPodsGone(ns, float(settings.wait_timeout))))
            p.removed.append(f"{node}: {len(hub_pods)} pod(s) in namespace {ns} (user servers are stopped)")
        ds = facts.get("ascend_ds")
        if ds and ((ds.get("metadata") or {}).get("labels") or {}).get(MANAGED) == "provision":
            p.steps.append(Step(node, RunCommand(kubectl("delete", "daemonset", ASCEND_DS[1], "-n", ASCEND_DS[0],
                                                         "--ignore-not-found"),
                                                 "remove the Ascend device plugin DaemonSet", timeout=120)))
            p.removed.append(f"{node}: DaemonSet {ASCEND_DS[0]}/{ASCEND_DS[1]}")
            value = ((ds.get("spec") or {}).get("template", {}).get("spec", {}).get("nodeSelector") or {}).get(
                ASCEND_LABEL)  # the value stage 50 labels NPU nodes with (and its DaemonSet selects)
            labelled = [n["metadata"]["name"] for n in (facts.get("nodes") or {}).get("items") or []
                        if value and ((n.get("metadata") or {}).get("labels") or {}).get(ASCEND_LABEL) == value]
            for n in labelled:
                p.steps.append(Step(node, RunCommand(kubectl("label", "node", n, f"{ASCEND_LABEL}-"),
                                                     f"remove label {ASCEND_LABEL} from node {n}", timeout=60)))
            if labelled:
                p.removed.append(f"{node}: node label {ASCEND_LABEL} on {', '.join(labelled)}")
        if facts.get("smoke_cm") is not None:
            p.steps.append(Step(node, RunCommand(kubectl("delete", "configmap", SMOKE[1], "-n", SMOKE[0],
                                                         "--ignore-not-found"),
                                                 "remove the smoke-test record", timeout=60)))
            p.removed.append(f"{node}: ConfigMap {SMOKE[0]}/{SMOKE[1]}")
        namespaces = set(_names(facts.get("namespaces")))
        gone = [n for n in (SMOKE_NS, *(rns for _, rns in RELEASES)) if n in namespaces]
        if opts.delete_data and opts.keep_cluster and ns in namespaces:
            gone.append(ns)
        for n in gone:
            p.steps.append(Step(node, RunCommand(kubectl("delete", "namespace", n, "--ignore-not-found",
                                                         "--timeout=300s"), f"delete namespace {n}", timeout=360)))
            p.removed.append(f"{node}: namespace {n}")
        if ns in namespaces and ns not in gone:
            p.removed.append(f"{node}: namespace {ns}" + (" (goes with MicroK8s)" if not opts.keep_cluster else
                                                          " is KEPT (its claims hold user data)"))
    elif not opts.keep_cluster and facts.get("microk8s"):
        p.removed.append(f"{node}: (the Kubernetes API does not answer: releases cannot be listed; they go "
                         "with MicroK8s)")
    keep_volume_steps(facts, settings, node, opts, pvs, p)
    ng = facts.get("nginx") or {}
    if (ng.get("present") and ([f for f in (SITE, CERT, KEY) if (ng.get("files") or {}).get(f)]
                               or ng.get("link") == SITE)):
        p.steps.append(Step(node, RemoveSite()))
        ours = [f for f in (SITE_LINK, SITE, CERT, KEY) if (ng.get("files") or {}).get(f) or f == SITE_LINK]
        p.removed.append(f"{node}: Nginx site {', '.join(ours)}")
    ufw, fwd = facts.get("ufw") or {}, facts.get("firewalld") or {}
    ports = [f"{settings.nodeport}/tcp"] + ([f"{settings.usage_portal_port}/tcp"] if settings.enable_usage_portal
                                            else [])
    for port in ports:
        if ufw.get("active") and port in ufw.get("allowed", []):
            p.steps.append(Step(node, RunCommand(("ufw", "delete", "allow", port), f"close {port} in ufw", timeout=60)))
            p.removed.append(f"{node}: ufw rule allow {port}")
        if fwd.get("running") and port in fwd.get("permanent", []):
            p.steps.append(Step(node, RunCommand(("firewall-cmd", "--permanent", f"--remove-port={port}"),
                                                 f"close {port} in firewalld (permanent)", timeout=60)))
            p.removed.append(f"{node}: firewalld port {port}")
        if fwd.get("running") and port in fwd.get("runtime", []):
            p.steps.append(Step(node, RunCommand(("firewall-cmd", f"--remove-port={port}"),
                                                 f"close {port} in firewalld (now)", timeout=60)))
    if settings.enable_nginx_proxy and (ufw.get("active") or fwd.get("running")):
        p.after.append("ports 80/443 stay open in the firewall (other sites may use them): close them by hand if "
                       "nothing else needs them")
    for unit in facts.get("units") or ():
        for argv, why in ((("systemctl", "disable", "--now", unit), f"stop {UNITS.get(unit, unit)}"),
                          (("rm", "-f", f"/etc/systemd/system/{unit}"), "remove its unit file"),
                          (("systemctl", "daemon-reload"), "reload systemd")):
            p.steps.append(Step(node, RunCommand(argv, why, timeout=60)))
        p.removed.append(f"{node}: systemd unit {unit}")


def keep_volume_steps(facts: Mapping[str, Any], settings: Any, node: str, opts: Options,
                      pvs: list[dict[str, Any]], p: UninstallPlan) -> None:
    """hostpath-storage volumes (inside the snap's tree). Full uninstall: every directory there is moved to
    KEPT_DIR, with the claim each held (default), or left to `snap remove --purge` (--delete-data).
    --keep-cluster: the snap stays, so the data stays in place; the hub database's PV (its claim goes with the
    release) is recorded and its Released PV deleted, so a re-install binds the claim to it again."""
    from stages._microk8s import human

    data = facts.get("data") or {}
    sizes = data.get("sizes") or {}
    known = data.get("pv") is not None

    def what(path: str, ref: Mapping[str, Any] | None) -> str:
        size = sizes.get(path)
        owner = f"{ref['namespace']}/{ref['name']}: " if ref else "no claim: "
        return f"{owner}{path} ({human(size) if size is not None else 'size unknown'})"

    if opts.keep_cluster:
        for pv in pvs:
            spec = pv.get("spec") or {}
            path, ref = (spec.get("hostPath") or {}).get("path", ""), spec["claimRef"]
            if not under(path, (D.HOSTPATH_DIR, D.KEPT_DIR)) or path not in sizes:
                continue  # shared storage (never touched), or a volume already gone
            if opts.delete_data:
                p.deleted.append(f"{node}: {what(path, ref)}")
                p.steps.append(Step(node, RunCommand(("rm", "-rf", "--", path), f"delete {what(path, ref)}",
                                                     timeout=600)))
            elif ref.get("name") != D.HUB_DB_CLAIM:
                continue  # a user's claim stays in the kept namespace, bound to it
            else:
                p.steps.append(Step(node, KeepVolumes((json.dumps(D.kept_record(pv, path), sort_keys=True),),
                                                      ((path, path),))))
            p.steps.append(Step(node, RunCommand(kubectl("delete", "pv", pv["metadata"]["name"],
                                                         "--ignore-not-found", "--wait=false"),
                                                 f"delete PV {pv['metadata']['name']} (its claim is gone; the data "
                                                 "is " + ("deleted" if opts.delete_data else "kept") + ")",
                                                 timeout=60)))
        return
    dirs = [f"{D.HOSTPATH_DIR}/{d}" for d in data.get("hostpath_dirs") or []]
    if not dirs:
        return
    if opts.delete_data:
        p.deleted += [f"{node}: {what(d, None)}" for d in dirs]
        return
    if not known:
        raise ProvisionError(f"{node}: the Kubernetes API does not answer, so the claims of the {len(dirs)} "
                             f"volume(s) in {D.HOSTPATH_DIR} are unknown; nothing was changed",
                             "start MicroK8s (`sudo microk8s start`) and re-run, so the volumes can be kept "
                             "for a re-install (or pass --delete-data to delete them)", exit_code=EXIT_REFUSED)
    by_path = {((pv.get("spec") or {}).get("hostPath") or {}).get("path", "").rstrip("/"): pv
               for pv in (data.get("pv") or {}).get("items") or []}
    moves, entries = [], []
    for d in dirs:
        dst = kept_path(d)
        pv = by_path.get(d)
        rec = D.kept_record(pv, dst) if pv and (pv.get("spec") or {}).get("claimRef") else D.orphan_record(dst)
        moves.append((dst, d))
        entries.append(json.dumps(rec, sort_keys=True))
    p.steps.append(Step(node, KeepVolumes(tuple(entries), tuple(moves))))


def node_steps(facts: Mapping[str, Any], node: str, control: bool, opts: Options, p: UninstallPlan) -> None:
    """MicroK8s and its snap on one node: stop, unmount, remove --purge, clean up what it left."""
    if opts.keep_cluster:
        return
    phase = "control" if control else "worker"
    if facts.get("snap") and control and facts.get("microk8s"):
        p.steps.append(Step(node, phase=phase, action=RunCommand(mk("stop"), "stop MicroK8s", timeout=300)))
    mounts = mounts_to_unmount(facts)
    if mounts:
        roots = tuple(dict.fromkeys([*UNMOUNT_ROOTS, facts.get("kubelet_root") or KUBELET_LINK]))
        p.steps.append(Step(node, phase=phase, action=Unmount(roots, tuple(mounts))))
    if facts.get("snap"):
        p.steps.append(Step(node, phase=phase, action=RunCommand(("snap", "remove", "--purge", "microk8s"),
                                             "remove the MicroK8s snap (--purge: its data is safe by now)",
                                             timeout=900)))
        p.removed.append(f"{node}: MicroK8s and its snap (snap remove --purge microk8s; never `microk8s reset`)")
        links = tuple(path for path, link in (facts.get("links") or {}).items() if _in_snap(link.get("target", "")))
    else:
        links = tuple(path for path, link in (facts.get("links") or {}).items()
                      if _in_snap(link.get("target", "")) and link.get("dangling"))
    net = tuple(facts.get("net") or ())
    if links or net:
        p.steps.append(Step(node, phase=phase, action=RemoveLinks(links, net)))
        p.removed.append(f"{node}: " + ", ".join([*links, *net]))


def kept_lines(facts: Mapping[str, Any], settings: Any, node: str, opts: Options) -> list[str]:
    """What stays, with paths and sizes; volumes in the snap's tree at the path they are moved to."""
    from stages._microk8s import human

    data = facts.get("data") or {}
    move = not opts.keep_cluster and not opts.delete_data
    out, listed = [], set()
    for loc in D.data_locations(data, settings, node):
        if opts.delete_data and (_in_snap(loc.path) or not opts.keep_cluster and under(loc.path, (D.KEPT_DIR,))):
            continue  # listed under "deleted"
        listed.add(loc.path.rstrip("/"))
        if move and _in_snap(loc.path):
            kept = dataclasses.replace(loc, path=f"{kept_path(loc.path)} (moved from {loc.path})")
            out.append(kept.describe())
        else:
            out.append(loc.describe() + (" (inside the snap's tree: `provision uninstall` without "
                                         "--keep-cluster moves it out first)" if _in_snap(loc.path) else ""))
    if move:
        for d in data.get("hostpath_dirs") or []:
            path = f"{D.HOSTPATH_DIR}/{d}"
            if path not in listed:
                size = (data.get("sizes") or {}).get(path)
                out.append(f"volume of no hub claim: {kept_path(path)} (moved from {path}) on {node}, "
                           f"{human(size) if size is not None else 'size unknown'}")
    if settings.enable_usage_portal:  # sessions and quotas: who used what stays answerable after a re-install
        db = "USAGE_DB_URL (not touched)" if settings.usage_db_url.reveal() else f"{USAGE_DB} on {node}"
        out.append(f"usage portal records: {db}")
    return out


def kept_path(path: str) -> str:
    return f"{D.KEPT_DIR}/{path.rstrip('/').rsplit('/', 1)[-1]}"


def plan(facts_by_node: Mapping[str, Mapping[str, Any]], control: str, workers: Sequence[str], settings: Any,
         opts: Options) -> UninstallPlan:
    """The whole uninstall, in order: the cluster's objects (control node), then each worker, then the control
    plane. Pure."""
    p = UninstallPlan()
    cf = facts_by_node[control]
    cluster_steps(cf, settings, control, opts, p)
    for w in workers:
        if w in facts_by_node:
            node_steps(facts_by_node[w], w, False, opts, p)
    node_steps(cf, control, True, opts, p)
    p.kept = kept_lines(cf, settings, control, opts)
    if opts.delete_data and not opts.keep_cluster:
        for rec in (cf.get("data") or {}).get("kept") or []:
            p.deleted.append(f"{control}: {rec.get('namespace')}/{rec.get('claim')}: {rec.get('dir')} "
                             "(kept by an earlier uninstall)")
        if (cf.get("data") or {}).get("kept"):
            p.steps.append(Step(control, RunCommand(("rm", "-rf", "--", D.KEPT_DIR),
                                                    f"delete the volumes kept in {D.KEPT_DIR}", timeout=600),
                                "control"))
    return p


def verify(facts_by_node: Mapping[str, Mapping[str, Any]], control: str, settings: Any,
           opts: Options) -> list[Check]:
    """After the run: what must be gone is gone (per node), and the kept data is where the plan said."""
    from provision.jupyterhub import RELEASE
    from stages.s80_access import SITE

    checks: list[Check] = []
    cf = facts_by_node.get(control) or {}
    ours = {(RELEASE, settings.hub_namespace), *RELEASES}
    left = [f"{r['name']} ({r['namespace']})" for r in cf.get("releases") or [] if (r["name"], r["namespace"]) in ours]
    checks.append(Check("helm releases removed", not left, ", ".join(left) or "none left"))
    checks.append(Check("Nginx site removed", (cf.get("nginx") or {}).get("link") != SITE
                        and not ((cf.get("nginx") or {}).get("files") or {}).get(SITE), SITE))
    checks.append(Check("provision's units removed", not cf.get("units"), ", ".join(cf.get("units") or UNITS)))
    if not opts.keep_cluster:
        for node, f in facts_by_node.items():
            mounts = mounts_to_unmount(f)
            dangling = [p for p, link in (f.get("links") or {}).items()
                        if _in_snap(link.get("target", "")) and link.get("dangling")]
            checks += [Check(f"{node}: microk8s snap removed", not f.get("snap")),
                       Check(f"{node}: no dangling MicroK8s link", not dangling, ", ".join(dangling) or KUBELET_LINK),
                       Check(f"{node}: no cni0 / vxlan.calico", not f.get("net"), ", ".join(f.get("net") or ())
                             or "gone"),
                       Check(f"{node}: no mount left under {SNAP_COMMON} or {KUBELET_LINK}", not mounts,
                             ", ".join(mounts[:5]))]
    if not opts.delete_data:
        data = cf.get("data") or {}
        sizes = data.get("sizes") or {}
        missing = [r.get("dir", "") for r in data.get("kept") or [] if r.get("dir") not in sizes]
        checks.append(Check(f"kept volumes present ({len(data.get('kept') or [])} in {D.KEPT_RECORD})",
                            not missing, ", ".join(missing) or "all there",
                            "a kept directory is missing: look for it before re-installing"))
    return checks

"""The checks of `provision diag` / stage 90: pure functions of the facts stages/_diag.py gathers.

Each returns Checks whose line reads "name: detail — fix". ok=False with warning=True is a warning. Where a
check reuses an earlier stage's rule it calls it (OS: stage 00; CoreDNS upstream: stages/_dns.py; hub readiness:
stage 70; NodePort: stage 80's verify; certificate expiry: stages/_tls.py's 30-day margin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision.stage import Check, Node, Role
from stages import _microk8s as M

CLUSTER = "cluster"
USER_LABEL = "singleuser-server"
USER_ANNOTATION = "hub.jupyter.org/username"
HUB_DB_CLAIM = "hub-db-dir"
# kubelet's defaults (KubeletConfiguration imageGCHighThresholdPercent 85, imageGCLowThresholdPercent 80): above
# 85 % use of the image filesystem it deletes unused images until 80 %. Usage is computed as kubelet's image GC
# does: 100 - available * 100 / capacity.
IMAGE_GC_HIGH = 85
DISK_WARN = 75
GPU = "nvidia.com/gpu"
IMAGE_FS_PATH = "/var/snap/microk8s/common"  # stages/_diag.IMAGE_FS
INSPECT = "run `sudo microk8s inspect` on the control node"


def _items(obj: Any) -> list[dict[str, Any]]:
    return list((obj or {}).get("items") or [])


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _int(v: Any) -> int:
    s = str(v if v is not None else "0")
    return int(s) if s.isdigit() else 0


def _short(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# ---------------------------------------------------------------------------------------------
# Which Kubernetes node an inventory node is


def kube_node(facts: Mapping[str, Any], nodes: Any) -> dict[str, Any] | None:
    """The Kubernetes node of an inventory node: named after its lower-cased hostname (MicroK8s), else the one
    whose addresses include the node's address (a node reached by IP is named by its address in the run)."""
    host = str(((facts.get("hostname") or {}).get("hostname")) or "").lower()
    address = str((facts.get("node") or {}).get("address", ""))
    name = str((facts.get("node") or {}).get("name", "")).lower()
    items = _items(nodes)
    for key in (host, name):
        found = next((n for n in items if key and _meta(n).get("name") == key), None)
        if found:
            return found
    return next((n for n in items if address and address in
                 {a.get("address") for a in (n.get("status") or {}).get("addresses") or []}), None)


def roles_of(facts: Mapping[str, Any], node: Node) -> frozenset[Role]:
    from stages.s00_preflight import node_roles

    return node_roles(facts, node)[0]


# ---------------------------------------------------------------------------------------------
# Node checks


def check_node_ready(kn: Mapping[str, Any] | None, name: str) -> list[Check]:
    if kn is None:
        return [Check("node ready", False, f"{name} is not a Kubernetes node (not in `kubectl get nodes`)",
                      "join it with `provision node add ADDRESS`, or remove it from the inventory with "
                      "`provision node del NAME`")]
    kname = _meta(kn)["name"]
    conds = {c.get("type"): c for c in (kn.get("status") or {}).get("conditions") or []}
    ready = conds.get("Ready") or {}
    out = []
    if ready.get("status") != "True":
        why = ready.get("message") or ready.get("reason") or "no Ready condition"
        out.append(Check("node ready", False, f"{kname} is NotReady: {why}",
                         f"on {kname}: `sudo microk8s status`, `sudo journalctl -u snap.microk8s.daemon-kubelite`"))
    else:
        out.append(Check("node ready", True, f"{kname} Ready, kubelet {((kn.get('status') or {}).get('nodeInfo') or {}).get('kubeletVersion', '?')}"))
    pressure = [t for t in ("DiskPressure", "MemoryPressure", "PIDPressure") if (conds.get(t) or {}).get("status") == "True"]
    if pressure:
        out.append(Check("node pressure", False, f"{kname} reports {', '.join(pressure)}: the kubelet evicts pods",
                         f"free disk/memory on {kname} (`df -h /var/snap`, `free -h`)"))
    if (kn.get("spec") or {}).get("unschedulable"):
        out.append(Check("node schedulable", False, f"{kname} is cordoned: no new pods start there",
                         f"`sudo microk8s kubectl uncordon {kname}` when it is back in service", warning=True))
    return out


def check_snap(facts: Mapping[str, Any], manifest: Any) -> list[Check]:
    sl = facts.get("snap_list") or {}
    mk = (sl.get("snaps") or {}).get("microk8s")
    if mk is None:
        return [Check("microk8s snap", False, "the microk8s snap is not installed" if sl.get("present")
                      else "snap is not installed", "install it: `provision install` (stage 10)")]
    tracking = f", tracking {mk['tracking']}" if mk.get("tracking", "-") != "-" else ""
    out = [Check("microk8s snap", True, f"{mk['version']} rev {mk['rev']}{tracking}")]
    if "held" not in mk.get("notes", []):
        out.append(Check("microk8s refresh hold", False, "refreshes are not held: an automatic refresh restarts "
                         "or upgrades MicroK8s under running servers", "sudo snap refresh --hold microk8s",
                         warning=True))
    bundled = manifest.snap("microk8s") if manifest is not None else None
    if bundled is not None and bundled.revision and mk["rev"] != bundled.revision:
        out.append(Check("microk8s revision", False, f"rev {mk['rev']} installed, the bundle has rev "
                         f"{bundled.revision}", "the same track, so provision keeps it; refresh deliberately "
                         "(`sudo snap refresh microk8s` from the bundle) if you want the bundle's", warning=True))
    return out


def check_containerd(facts: Mapping[str, Any]) -> list[Check]:
    ctr = facts.get("ctr_images") or {}
    if ctr.get("available"):
        return [Check("containerd", True, f"answers, {len(ctr.get('images') or {})} images")]
    said = (ctr.get("error") or "microk8s not installed").strip().splitlines()[-1:] or ["no output"]
    return [Check("containerd", False, f"`microk8s ctr images ls` failed: {said[0][:200]}",
                  "`sudo snap services microk8s`; `sudo journalctl -u snap.microk8s.daemon-containerd`")]


def check_images(facts: Mapping[str, Any], roles: frozenset[Role], manifest: Any, problem: str) -> list[Check]:
    if problem:
        return [Check("images", False, f"not checked: {problem}",
                      "pass the bundle you installed from: --offline-images DIR", warning=True)]
    ctr = facts.get("ctr_images") or {}
    if not ctr.get("available"):
        return []  # the containerd check says why
    present = ctr.get("images") or {}
    needed = {i.ref: i for i in manifest.images_for_roles(roles)}
    missing = [r for r in needed if r not in present]
    other = [r for r, i in needed.items() if r in present and i.digest and present[r] != i.digest]
    role_names = ", ".join(sorted(r.value for r in roles))
    out = []
    if missing:
        out.append(Check("images", False, f"{len(missing)} of {len(needed)} images its roles ({role_names}) need are "
                         f"not in containerd: {_short(missing)}", "offline they cannot be pulled: import them again "
                         "with `provision install --only 20`"))
    elif other:
        out.append(Check("images", False, f"{len(other)} image(s) differ from the bundle's digest: {_short(other)}",
                         "`provision install --only 20` imports the bundle's", warning=True))
    else:
        out.append(Check("images", True, f"all {len(needed)} images for {role_names} present"))
    return out


def check_calico(pods: Any, kname: str) -> list[Check]:
    p = M.pods_by_node({"items": [x for x in _items(pods) if _meta(x).get("namespace") == "kube-system"]},
                       "calico-node-").get(kname)
    if p is None:
        return [Check("calico-node", False, f"no calico-node pod on {kname}",
                      "`sudo microk8s kubectl -n kube-system get ds calico-node`; `provision install --only 30`")]
    name = _meta(p).get("name")
    if M.pod_ready(p):
        return [Check("calico-node", True, f"{name} ready")]
    return [Check("calico-node", False, f"{name}: {M.pod_problem(p)}",
                  f"`sudo microk8s kubectl -n kube-system describe pod {name}`")]


def check_disk(facts: Mapping[str, Any]) -> list[Check]:
    d = facts.get("disk") or {}
    if not d.get("size"):
        return [Check("disk", False, f"could not read the filesystem of {IMAGE_FS_PATH} (df failed)",
                      "check `df -h /var/snap` on the node", warning=True)]
    used = 100 - d["avail"] * 100 // d["size"]
    free = f"{d['avail'] / 1024**3:.1f} GiB free of {d['size'] / 1024**3:.1f} GiB"
    where = f"{d['mount']} (images and volumes under {IMAGE_FS_PATH}) {used}% used, {free}"
    if used >= IMAGE_GC_HIGH:
        return [Check("disk", False, f"{where}: kubelet will delete imported images that no pod uses (image GC "
                      f"above {IMAGE_GC_HIGH}%); offline they cannot be pulled back",
                      f"free space on {d['mount']} below {DISK_WARN}% (old logs, unused data), then "
                      "`provision install --only 20` re-imports what was deleted")]
    if used >= DISK_WARN:
        return [Check("disk", False, f"{where}: at {IMAGE_GC_HIGH}% kubelet starts deleting unused images",
                      f"free space on {d['mount']} or grow it", warning=True)]
    return [Check("disk", True, where)]



def check_clock(facts: Mapping[str, Any], control: Mapping[str, Any], limit: float, control_name: str) -> list[Check]:
    """Skew against the control node, both read during the same run: each reading lies between this machine's
    clock before and after its round trip, so the skew lies in an interval; fail only when all of it is
    beyond MAX_CLOCK_SKEW (the limit preflight applies before install)."""
    a, b = facts.get("clock"), control.get("clock")
    la, lb = facts.get("local_clock") or {}, control.get("local_clock") or {}
    if a is None or b is None or not la or not lb:
        return [Check("clock", False, "could not read the clock (date failed)", "check `date` on the node",
                      warning=True)]
    low = (a - la["after"]) - (b - lb["before"])
    high = (a - la["before"]) - (b - lb["after"])
    if low > limit or high < -limit:
        skew = (low + high) / 2
        return [Check("clock", False, f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} {control_name} "
                      f"(MAX_CLOCK_SKEW={limit:g}s): certificates, tokens and the idle culler misjudge time",
                      "sync every node to one time source (chrony or systemd-timesyncd against a local NTP server)")]
    return [Check("clock", True, f"within {max(abs(low), abs(high)):.1f} s of {control_name}")]


def devices_in_use(pods: Any, kname: str, resource: str) -> tuple[int, list[str]]:
    """How many of `resource` the pods on a node that are not finished hold, and 'namespace/pod (n)' for each."""
    total, who = 0, []
    for p in _items(pods):
        spec, st = p.get("spec") or {}, p.get("status") or {}
        if spec.get("nodeName") != kname or st.get("phase") in ("Succeeded", "Failed"):
            continue
        n = sum(max(_int(((c.get("resources") or {}).get("limits") or {}).get(resource)),
                    _int(((c.get("resources") or {}).get("requests") or {}).get(resource)))
                for c in spec.get("containers") or [])
        if n:
            total += n
            who.append(f"{_meta(p).get('namespace')}/{_meta(p).get('name')}" + (f" ({n})" if n > 1 else ""))
    return total, sorted(who)


def check_devices(kind: str, resource: str, seen: int, kn: Mapping[str, Any], pods: Any, fix: str) -> list[Check]:
    """Devices the driver sees vs what Kubernetes can hand out, and how many are handed out already."""
    kname = _meta(kn)["name"]
    alloc = _int(((kn.get("status") or {}).get("allocatable") or {}).get(resource))
    if alloc != seen:
        return [Check(kind, False, f"the driver sees {seen} {kind}, Kubernetes offers {alloc} {resource}", fix)]
    used, who = devices_in_use(pods, kname, resource)
    if alloc and used >= alloc:
        return [Check(kind, False, f"new {kind[:-1].upper()} spawns will wait: {used} of {alloc} in use by {_short(who)}",
                      "stop idle servers (hub admin page, or lower IDLE_TIMEOUT) or add nodes with "
                      f"{kind}", warning=True)]
    return [Check(kind, True, f"{alloc} {resource} allocatable, {used} in use")]


def accelerator_checks(facts: Mapping[str, Any], kn: Mapping[str, Any], pods: Any, settings: Any) -> list[Check]:
    out: list[Check] = []
    smi = facts.get("nvidia_smi") or {}
    gpus = len(smi.get("gpus") or []) if smi.get("ok") else int(facts.get("nvidia_pci") or 0)
    if settings.use_gpu_operator and gpus:
        out += check_devices("gpus", GPU, gpus, kn, pods,
                             "`sudo microk8s kubectl -n gpu-operator get pods -o wide` (the device plugin and toolkit "
                             "on this node), then `provision install --only 50`")
    npu = facts.get("npu_smi") or {}
    npus = len(npu.get("npus") or []) if npu.get("ok") else int(facts.get("davinci_devices") or 0)
    if settings.enable_npu and npus:
        from stages._ascend import names

        resource = names(settings)[0]
        out += check_devices("npus", resource, npus, kn, pods,
                             "`sudo microk8s kubectl -n kube-system get pods -l name=ascend-device-plugin-ds -o wide`, "
                             "then `provision install --only 50`")
    if settings.enable_ib:
        from stages import _network_operator as N

        if ((_meta(kn).get("labels") or {}).get(N.IB_LABEL)) == "true":
            alloc = _int(((kn.get("status") or {}).get("allocatable") or {}).get(settings.ib_resource_name))
            out.append(Check("rdma", alloc >= 1, f"{alloc} {settings.ib_resource_name} allocatable",
                             f"`sudo microk8s kubectl -n {N.NAMESPACE} get pods -o wide`, then "
                             "`provision install --only 50`"))
    return out


def node_checks(facts: Mapping[str, Any], control: Mapping[str, Any], settings: Any, node: Node, manifest: Any,
                bundle_problem: str, control_name: str) -> list[Check]:
    from stages.s00_preflight import check_os

    if "unreachable" in facts:
        u = facts["unreachable"]
        return [Check("reachable", False, u["error"], u["hint"] or "check that the node is up and SSH works")]
    out = [check_os(facts, settings, node)]
    cluster_up = control.get("k_nodes") is not None
    kn = kube_node(facts, control.get("k_nodes")) if cluster_up else None
    if cluster_up:
        out += check_node_ready(kn, node.name)
    out += check_snap(facts, manifest) + check_containerd(facts)
    out += check_images(facts, roles_of(facts, node), manifest, bundle_problem)
    if kn is not None:
        out += check_calico(control.get("k_pods"), _meta(kn)["name"])
        out += accelerator_checks(facts, kn, control.get("k_pods"), settings)
    out += check_disk(facts)
    if not node.is_control and control:
        out += check_clock(facts, control, float(settings.max_clock_skew), control_name)
    return out


def all_checks(results: Mapping[str, Mapping[str, Any]], settings: Any, nodes: Sequence[Node], manifest: Any,
               bundle_problem: str) -> dict[str, list[Check]]:
    """{node name: its checks, CLUSTER: the cluster-wide checks} from every node's facts."""
    from stages._diag_cluster import cluster_checks

    control = next(n for n in nodes if n.is_control)
    c = results.get(control.name) or {}
    out: dict[str, list[Check]] = {}
    cluster, nodeport = cluster_checks(c, settings, control, results)
    for n in nodes:
        f = results.get(n.name)
        if f is None:
            continue
        checks = node_checks(f, c, settings, n, manifest, bundle_problem, control.name)
        kn = kube_node(f, c.get("k_nodes")) if "unreachable" not in f else None
        if kn is not None and _meta(kn)["name"] in nodeport:
            checks.append(nodeport[_meta(kn)["name"]])
        out[n.name] = checks
    out[CLUSTER] = cluster
    return out

"""Removing a node from a MicroK8s cluster: the safety report and the plan (pure functions over kubectl JSON
and `microk8s status --format yaml`), and the small runners `provision node del` calls. Not a stage.

The order follows shared/reference/microk8s.md §5 and kubespray's remove_node.yml (wave2-anchors.md §2):
cordon, drain through the eviction API (PodDisruptionBudgets honoured, bounded), `microk8s leave` on the
node, `microk8s remove-node` on a control-plane node (`--force` only when leave could not run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stages._microk8s import kubectl, mk, parse_kube_json

# kubespray roles/remove-node/pre-remove defaults: drain_grace_period 300, drain_timeout 360s, drain_retries 3
DRAIN_GRACE_PERIOD = 300
DRAIN_TIMEOUT = 360
DRAIN_RETRIES = 3
USER_SERVER = "component=singleuser-server"  # the label JupyterHub's KubeSpawner puts on user pods
USER_ANNOTATION = "hub.jupyter.org/username"
CONTROL_LABEL = "node.kubernetes.io/microk8s-controlplane"
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def valid_node_name(value: str) -> bool:
    """A Kubernetes node name (RFC 1123 subdomain) or an IP address: nothing else reaches a command."""
    return len(value) <= 253 and bool(_NODE_NAME.fullmatch(value))


@dataclass(frozen=True)
class NodeFacts:
    """The departing node as Kubernetes sees it (None fields when it is not in Kubernetes)."""

    name: str
    address: str
    control: bool
    in_kubernetes: bool
    ready: bool


def find_node(nodes: dict[str, Any] | None, key: str) -> NodeFacts | None:
    """The node called `key`, or whose InternalIP is `key` (as remove_node.py maps it)."""
    for n in (nodes or {}).get("items") or []:
        meta, st = n.get("metadata") or {}, n.get("status") or {}
        ips = [a.get("address") for a in st.get("addresses") or [] if a.get("type") == "InternalIP"]
        if meta.get("name") == key or key in ips:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
            return NodeFacts(str(meta["name"]), (ips or [""])[0], CONTROL_LABEL in (meta.get("labels") or {}),
                             True, ready)
    return None


def control_nodes(nodes: dict[str, Any] | None) -> list[str]:
    return sorted(str(n["metadata"]["name"]) for n in (nodes or {}).get("items") or []
                  if CONTROL_LABEL in ((n.get("metadata") or {}).get("labels") or {}))


def voters(status_yaml: str) -> list[str]:
    """dqlite voters' addresses (without :19001) from `microk8s status --format yaml`; [] when unknown."""
    import yaml

    try:
        doc = yaml.safe_load(status_yaml)
    except yaml.YAMLError:
        return []
    ha = (doc or {}).get("high-availability") if isinstance(doc, dict) else None
    return [str(n.get("address", "")).rsplit(":", 1)[0] for n in (ha or {}).get("nodes") or []
            if isinstance(n, dict) and n.get("role") == "voter"]


def user_servers(pods: dict[str, Any] | None, node: str) -> list[str]:
    """'user (namespace/pod)' for each JupyterHub user server running on `node`."""
    out = []
    for p in (pods or {}).get("items") or []:
        meta = p.get("metadata") or {}
        if (p.get("spec") or {}).get("nodeName") != node or (p.get("status") or {}).get("phase") in (
                "Succeeded", "Failed"):
            continue
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        if labels.get("component") != "singleuser-server":
            continue
        user = notes.get(USER_ANNOTATION) or labels.get(USER_ANNOTATION) or "?"
        out.append(f"{user} ({meta.get('namespace')}/{meta.get('name')})")
    return sorted(out)


def _pv_on_node(pv: dict[str, Any], node: str) -> bool:
    terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms") or []
    for t in terms:
        for e in (t.get("matchExpressions") or []) + (t.get("matchFields") or []):
            if e.get("key") in ("kubernetes.io/hostname", "metadata.name") and e.get("operator") == "In" \
                    and node in (e.get("values") or []):
                return True
    return False


def hostpath_volumes(pvs: dict[str, Any] | None, pods: dict[str, Any] | None, node: str) -> list[str]:
    """Volumes whose data lives on `node`'s disk: PVs pinned to it by nodeAffinity, and hostPath PVs
    claimed by pods running there. 'pv-name (namespace/claim)'."""
    claims_here = {((p.get("metadata") or {}).get("namespace"), v["persistentVolumeClaim"].get("claimName"))
                   for p in (pods or {}).get("items") or [] if (p.get("spec") or {}).get("nodeName") == node
                   for v in (p.get("spec") or {}).get("volumes") or [] if v.get("persistentVolumeClaim")}
    out = []
    for pv in (pvs or {}).get("items") or []:
        spec = pv.get("spec") or {}
        ref = spec.get("claimRef") or {}
        claim = (ref.get("namespace"), ref.get("name"))
        if _pv_on_node(pv, node) or (spec.get("hostPath") and claim in claims_here):
            out.append(f"{pv['metadata']['name']} ({claim[0]}/{claim[1]})" if ref else pv["metadata"]["name"])
    return sorted(out)


@dataclass
class Report:
    """What removing the node would cost. `blockers` need --force; `fatal` is refused always."""

    node: NodeFacts
    users: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    quorum: str = ""
    fatal: str = ""

    @property
    def blockers(self) -> list[str]:
        out = []
        if self.users:
            out.append(f"{len(self.users)} user server(s) would be stopped: {', '.join(self.users)}")
        if self.volumes:
            out.append(f"data on the node's disk would be lost: {', '.join(self.volumes)}")
        return out

    def lines(self) -> list[str]:
        n = self.node
        role = "control-plane" if n.control else "worker"
        out = [f"node {n.name} ({n.address or 'no address'}), {role}, "
               + ("Ready" if n.ready else "not Ready" if n.in_kubernetes else "not in Kubernetes")]
        out.append("user servers: " + (", ".join(self.users) or "none"))
        out.append("hostpath volumes: " + (", ".join(self.volumes) or "none"))
        if self.quorum:
            out.append("quorum: " + self.quorum)
        return out


def safety_report(node: NodeFacts, nodes: dict[str, Any] | None, pods: dict[str, Any] | None,
                  pvs: dict[str, Any] | None, dqlite_voters: list[str], control_here: str) -> Report:
    """The report for removing `node`; control_here is the control-plane node the commands run on."""
    rep = Report(node, user_servers(pods, node.name), hostpath_volumes(pvs, pods, node.name))
    controls = control_nodes(nodes)
    is_voter = bool(node.address) and node.address in dqlite_voters
    if node.control or is_voter:
        others = [c for c in controls if c != node.name]
        if not others:
            rep.fatal = (f"{node.name} is the last control-plane node: removing it would remove the cluster")
        elif node.name == control_here:
            rep.fatal = (f"{node.name} is the control-plane node this command runs on")
        if is_voter:
            rep.quorum = quorum_impact(len(dqlite_voters))
    return rep


def quorum_impact(n: int) -> str:
    """What losing one of n dqlite voters does (raft: the datastore answers while more than half of the
    voters are up; MicroK8s is highly available from 3 voters, `microk8s status`)."""
    left = n - 1
    head = f"{n} dqlite voters -> {left}"
    if left >= 3:
        return f"{head}: quorum kept, still highly available (survives losing 1 control-plane node)"
    if left == 2:
        return (f"{head}: quorum kept but no longer highly available (with 2 voters, losing either stops the "
                "API); add a control-plane node to get back to 3")
    return f"{head}: no longer highly available; while it leaves the API may pause"


def plan(rep: Report, reachable: bool, in_inventory: bool) -> list[str]:
    """The steps `node del` will take, in order, as shown by --dry-run and before the confirmation."""
    n = rep.node
    steps = []
    if n.in_kubernetes:
        steps.append(f"cordon {n.name}")
        steps.append(f"drain {n.name} through the eviction API (PodDisruptionBudgets honoured; grace "
                     f"{DRAIN_GRACE_PERIOD}s, timeout {DRAIN_TIMEOUT}s, {DRAIN_RETRIES} tries)")
    if reachable:
        steps.append(f"microk8s leave on {n.name}")
    else:
        steps.append(f"skip microk8s leave: {n.name} cannot be reached over SSH "
                     "(run `sudo microk8s leave` there by hand if it comes back)")
    if n.in_kubernetes:
        steps.append(f"microk8s remove-node {n.name}" + ("" if reachable else " --force")
                     + " on the control-plane node")
    if in_inventory:
        steps.append(f"remove {n.name} from the inventory")
    return steps


# ---------------------------------------------------------------------------------------------
# Runners: every value is an argv element (no shell), every name validated before it gets here.


def get_json(host: Any, *args: str) -> dict[str, Any] | None:
    from provision import facts as F

    r = host.run(list(kubectl("get", *args, "-o", "json")), sudo=True, timeout=60, check=False)
    return parse_kube_json(F.Raw(r.stdout, r.exit_status))


def status_yaml(host: Any) -> str:
    r = host.run(list(mk("status", "--format", "yaml")), sudo=True, timeout=90, check=False)
    return r.stdout


def cordon(host: Any, name: str) -> Any:
    return host.run(list(kubectl("cordon", name)), sudo=True, timeout=60, check=False)


def drain(host: Any, name: str, grace: int = DRAIN_GRACE_PERIOD, timeout: int = DRAIN_TIMEOUT,
          unmanaged: bool = False) -> Any:
    """`kubectl drain`: evictions (a PDB that forbids one is retried by kubectl until --timeout).
    unmanaged: also delete pods no controller recreates (JupyterHub's user servers are such bare pods;
    kubespray always passes kubectl's --force, we only when the user did)."""
    return host.run(list(kubectl("drain", name, "--ignore-daemonsets", "--delete-emptydir-data",
                                 f"--grace-period={grace}", f"--timeout={timeout}s",
                                 *(["--force"] if unmanaged else []))),
                    sudo=True, timeout=timeout + 60, check=False)


def leave(host: Any) -> Any:
    return host.run(list(mk("leave")), sudo=True, timeout=300, check=False)


def remove_node(host: Any, name: str, force: bool) -> Any:
    return host.run(list(mk("remove-node", name, *(["--force"] if force else []))), sudo=True, timeout=300,
                    check=False)

"""Diagnostics: every layer's health as checks (ok / warn / fail, one line each with the fix), read-only.

One batched probe script per node (provision/facts.py): the node's own facts (clock first, OS, snap, containerd's
images, the disk under MicroK8s' data, GPUs/NPUs the driver sees) and, on the control node only, the cluster's
objects as `microk8s kubectl ... -o json` and stage 80's access probes in the same round trip. The checks are pure
functions of those facts (stages/_diag_checks.py), so `provision diag`, stage 90 (its verify) and the support
bundle (`collect`) see the same thing. Nothing here changes a node: only reads (kubectl get, helm list, ctr images ls,
df, cat, `nginx -t`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from provision import facts as F
from provision.errors import EXIT_PREFLIGHT, ProvisionError, TransportError
from provision.stage import Check, Node
from stages import _microk8s as M
from stages._helm import parse_json

# MicroK8s' containerd keeps its images under /var/snap/microk8s/common/var/lib/containerd (microk8s.md §7):
# the kubelet's image filesystem is the filesystem holding this directory.
IMAGE_FS = "/var/snap/microk8s/common"
NGINX_CERT = "/etc/nginx/ssl/jupyterhub.crt"  # what stage 80 installs (stages/s80_access.CERT)
CLUSTER = "cluster"  # the checks key for cluster-wide checks


def parse_df(raw: F.Raw) -> dict[str, Any]:
    """`df -Pk PATH` (POSIX format: 1024-blocks, Used, Available, Capacity, Mounted on) → sizes in bytes."""
    rows = F.lines(raw)
    f = rows[-1].split() if len(rows) >= 2 else []
    if len(f) < 6 or not (f[1].isdigit() and f[3].isdigit()):
        return {}
    return {"filesystem": f[0], "mount": " ".join(f[5:]), "size": int(f[1]) * 1024, "avail": int(f[3]) * 1024}


def parse_text(raw: F.Raw) -> dict[str, Any]:
    return {"rc": raw.rc, "out": raw.out[-4000:]}


def node_probes() -> list[F.Probe]:
    """Facts every node reports. The clock goes first: read right after the round trip starts."""
    disk = F.Probe("disk", F.quoted("p={p}\nwhile [ ! -d \"$p\" ]; do p=$(dirname -- \"$p\"); done\ndf -Pk -- \"$p\"",
                                    p=IMAGE_FS), parse_df)
    return [F.clock, F.os_release, F.hostname, M.snap_list, M.ctr_images, disk, F.nvidia_smi, F.nvidia_pci,
            F.npu_smi, F.davinci_devices]


def cluster_probes(settings: Any) -> list[F.Probe]:
    """The control node's view of the cluster (kubectl and helm read the API only) plus stage 80's probes."""
    from stages.s80_access import AccessStage

    q = F.quoted
    pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
    out = [M.kube_probe("k_nodes", "nodes"), M.kube_probe("k_pods", "pods", "-A"),
           M.kube_probe("k_pv", "pv"), M.kube_probe("k_pvc", "pvc", "-A"), M.kube_probe("k_sc", "storageclass"),
           M.kube_probe("k_runtimeclass", "runtimeclass"),
           M.kube_probe("k_coredns", "configmap", "coredns", "-n", "kube-system"),
           M.kube_probe("k_deploy", "deployments", "-n", settings.hub_namespace),
           F.Probe("helm", pre + "timeout 60 microk8s helm3 list -A --all -o json", parse_json)]
    access = AccessStage().probes(settings)  # service, reach, ufw, firewalld, nginx
    out += access
    out += usage_portal_probes(settings)
    if settings.enable_nginx_proxy:
        out.append(F.Probe("nginx_test", "command -v nginx >/dev/null 2>&1 || exit 127\ntimeout 30 nginx -t 2>&1",
                           parse_text))
        out.append(F.Probe("cert_pem", q("cat -- {c}", c=NGINX_CERT), parse_text))
    return out


def usage_portal_probes(settings: Any) -> list[F.Probe]:
    """With ENABLE_USAGE_PORTAL=true: stage 75's unit state and the portal's GET /healthz (database, collector)."""
    if not settings.enable_usage_portal:
        return []
    from stages import s75_usage_portal as P

    q = F.quoted
    url = f"http://127.0.0.1:{settings.usage_portal_port}/healthz"
    return [F.Probe("usage_active", q("timeout 30 systemctl is-active {u}", u=P.UNIT), P.word),
            F.Probe("usage_health", q("timeout 10 python3 -c {py} {url} 5", py=P.HEALTH_PY, url=url), P.parse_health)]


def gather(host: Any, settings: Any, node: Node) -> dict[str, Any]:
    """One round trip: the node's facts (and the cluster's, on the control node), JSON-serialisable.
    `local_clock` brackets the round trip on this machine, so clocks can be compared between nodes."""
    probes = node_probes() + (cluster_probes(settings) if node.is_control else [])
    before = time.time()
    facts = dict(F.gather(host, probes, sudo=True))
    facts["local_clock"] = {"before": before, "after": time.time()}
    facts["node"] = {"name": node.name, "address": node.address, "control": node.is_control,
                     "roles": sorted(r.value for r in node.roles)}
    return facts


@dataclass
class DiagReport:
    """What `collect` found: checks per node (plus CLUSTER), the facts they came from, and the exit code."""

    checks: dict[str, list[Check]]
    facts: dict[str, Mapping[str, Any]]
    nodes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "warn": 0, "fail": 0}
        for checks in self.checks.values():
            for c in checks:
                out[status(c)] += 1
        return out

    @property
    def exit_code(self) -> int:
        n = self.counts
        return 2 if n["fail"] else 1 if n["warn"] else 0

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "exit_code": self.exit_code, "summary": self.counts,
                "seconds": round(self.seconds, 3),
                "checks": {where: [check_dict(c) for c in sort_checks(checks)]
                           for where, checks in self.checks.items()}}


def status(c: Check) -> str:
    return "ok" if c.ok else "warn" if c.warning else "fail"


_ORDER = {"fail": 0, "warn": 1, "ok": 2}


def sort_checks(checks: Sequence[Check]) -> list[Check]:
    """Worst first (fail, warn, ok); the order of the layers otherwise kept."""
    return sorted(checks, key=lambda c: _ORDER[status(c)])


def check_dict(c: Check) -> dict[str, str]:
    return {"status": status(c), "name": c.name, "detail": c.detail, "hint": "" if c.ok else c.hint}


def unreachable(name: str, e: ProvisionError) -> dict[str, Any]:
    return {"error": e.message.removeprefix(f"{name}: "), "hint": e.hint}


def collect(inventory: Any, settings: Any, bundle_dir: Any, concurrency: int = 10, console: Any = None) -> DiagReport:
    """Gather every inventory node in parallel (one round trip each) and run the checks.

    A node other than the control node that cannot be reached becomes a failed check; the control node
    unreachable raises ProvisionError with exit code 3 (nothing can be said about the cluster)."""
    from stages import _diag_checks as C

    t0 = time.monotonic()
    nodes = list(inventory.nodes)
    control = inventory.control

    def one(node: Node) -> dict[str, Any]:
        try:
            return gather(inventory.host(node), settings, node)
        except ProvisionError as e:
            if node.name == control.name:
                raise
            return {"node": {"name": node.name, "address": node.address, "control": False,
                             "roles": sorted(r.value for r in node.roles)}, "unreachable": unreachable(node.name, e)}

    status_cm = console.status(f"checking {len(nodes)} node(s)") if console is not None else None
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(nodes))), thread_name_prefix="provision-diag") as pool:
        futures = {n.name: pool.submit(one, n) for n in nodes}
        if status_cm is not None:
            with status_cm:
                results = _results(futures, control)
        else:
            results = _results(futures, control)
    manifest, bundle_problem = load_bundle(bundle_dir)
    checks = C.all_checks(results, settings, nodes, manifest, bundle_problem)
    return DiagReport(checks, results, [n.name for n in nodes], time.monotonic() - t0)


def _results(futures: Mapping[str, Any], control: Node) -> dict[str, dict[str, Any]]:
    out = {}
    for name, fut in futures.items():
        try:
            out[name] = fut.result()
        except ProvisionError as e:
            if isinstance(e, TransportError):
                raise ProvisionError(f"cannot reach the control-plane node {control.name}: "
                                     f"{e.message.removeprefix(control.name + ': ')}",
                                     e.hint or "check that it is up and that SSH (or sudo) works, then re-run",
                                     exit_code=EXIT_PREFLIGHT) from None
            raise
    return out


def load_bundle(bundle_dir: Any) -> tuple[Any, str]:
    """(manifest, "") or (None, why the image check is skipped): a missing bundle is a warning, not an error."""
    from pathlib import Path

    from provision.bundle import load_manifest, manifest_path

    if bundle_dir is None:
        return None, "no offline bundle given (--offline-images DIR)"
    if not manifest_path(bundle_dir).is_file():
        return None, f"no offline bundle at {Path(bundle_dir)} (its manifest.yaml is missing)"
    try:
        return load_manifest(bundle_dir), ""
    except ProvisionError as e:
        return None, f"cannot read the bundle at {bundle_dir}: {e.message}"

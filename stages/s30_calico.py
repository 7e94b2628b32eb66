"""Stage 30: the Calico that ships with the installed MicroK8s, pinned to the management NIC, ready everywhere.

MicroK8s writes its own Calico manifest to args/cni-network/cni.yaml at install and applies it
(microk8s.md §9); provision uses that one (its images come from the bundle, stage 10/20), never a
second copy. Calico's default `IP_AUTODETECTION_METHOD=first-found` picks the wrong address on hosts
with several NICs (InfiniBand, storage networks), so it is pinned: `interface=<MGMT_INTERFACE>` when
the key is set, else `can-reach=<control node IP>` (what `microk8s join` itself writes). The edited
file is re-applied and the stage waits until calico-node is ready on every node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import BundleError, ConflictError
from provision.stage import Action, ApplyContext, Check, Node, Plan, Scope
from stages import _microk8s as M

# The env entry's value, to the end of its line (whatever quoting an earlier writer used): replaced whole by
# a YAML-serialized scalar, so the rest of MicroK8s' file (comments, layout) stays as shipped.
_METHOD_RE = re.compile(r'(?P<head>-[ \t]*name:[ \t]*"?IP_AUTODETECTION_METHOD"?[ \t]*\n[ \t]*value:[ \t]*)'
                        r'(?P<value>[^\n]*)')
_IMAGE_RE = re.compile(r'^\s*image:\s*"?([^"\s]+)"?\s*$', re.MULTILINE)


class Calico(M.BundleStage):
    """Pin Calico's address autodetection to the management network; wait for calico-node everywhere."""

    number = 30
    title = "Calico networking"
    scope = Scope.CLUSTER

    def probes(self, settings: Any, manifest: Any) -> list[F.Probe]:
        return probes()

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return plan(facts, settings, node)

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        return verify(facts, settings, node)


def parse_nics(raw: F.Raw) -> dict[str, Any]:
    """/sys/class/net names, then `ip -o -4 addr` lines: {"names": [...], "ipv4": {iface: [ip, ...]}}."""
    names_part, _, addr_part = raw.out.partition("---\n")
    ipv4: dict[str, list[str]] = {}
    for ln in addr_part.splitlines():
        f = ln.split()
        if len(f) >= 4 and f[2] == "inet":
            ipv4.setdefault(f[1], []).append(f[3].split("/")[0])
    return {"names": sorted(names_part.split()), "ipv4": ipv4}


nics = F.Probe("nics", "ls /sys/class/net; printf -- '---\\n'; ip -o -4 addr show 2>/dev/null; true", parse_nics)


def probes() -> list[F.Probe]:
    return [M.installed, F.default_route, nics, M.file_probe("cni_yaml", M.CNI_YAML),
            M.kube_probe("calico_ds", "daemonset", "calico-node", "-n", "kube-system"),
            M.kube_probe("pods", "pods", "-n", "kube-system"), M.kube_probe("nodes", "nodes")]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def autodetect_method(cni_yaml: str) -> str | None:
    """IP_AUTODETECTION_METHOD of the calico-node DaemonSet in cni.yaml as YAML reads it; None when the
    file does not parse (e.g. an invalid escape an earlier version wrote) or has no such setting."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(cni_yaml))
    except yaml.YAMLError:
        return None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "DaemonSet" and \
                (doc.get("metadata") or {}).get("name") == "calico-node":
            return ds_method(doc)
    return None


def yaml_scalar(value: str) -> str:
    """`value` as one double-quoted YAML scalar, escaped by the YAML emitter (a regex's `\\.` stays valid)."""
    import yaml

    return yaml.safe_dump(value, default_style='"', width=1 << 16).strip()


def set_autodetect_method(cni_yaml: str, method: str) -> str:
    """cni.yaml with the calico-node IP_AUTODETECTION_METHOD set to `method`; refuses to return a file that
    YAML would not read back with exactly that value."""
    if not _METHOD_RE.search(cni_yaml):
        raise ConflictError(f"{M.CNI_YAML} has no IP_AUTODETECTION_METHOD setting",
                            "this is not the Calico manifest MicroK8s ships (microk8s.md §9); restore it with "
                            "`sudo /snap/microk8s/current/upgrade-scripts/000-switch-to-calico/commands` or "
                            "reinstall MicroK8s")
    new = _METHOD_RE.sub(lambda m: m.group("head") + yaml_scalar(method), cni_yaml, count=1)
    if autodetect_method(new) != method:
        raise ConflictError(f"{M.CNI_YAML}: setting IP_AUTODETECTION_METHOD={method} would not read back as "
                            "written (the file does not parse as YAML, or the setting is not calico-node's)",
                            "check the file with `microk8s kubectl apply --dry-run=client -f` on the node; "
                            "restore it from the MicroK8s snap (see microk8s.md §9), then re-run")
    return new


def cni_images(cni_yaml: str) -> list[str]:
    from provision.images import normalize_ref

    return list(dict.fromkeys(normalize_ref(i) for i in _IMAGE_RE.findall(cni_yaml)))


def ds_method(ds: Mapping[str, Any] | None) -> str | None:
    for c in ((ds or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
        if c.get("name") == "calico-node":
            for e in c.get("env") or []:
                if e.get("name") == "IP_AUTODETECTION_METHOD":
                    return e.get("value")
    return None


def desired_method(facts: Mapping[str, Any], settings: Any, node: Node) -> str | None:
    """What IP_AUTODETECTION_METHOD should be, or None to keep MicroK8s' own choice (single-NIC hosts)."""
    if settings.mgmt_interface:
        return f"interface=^{re.escape(settings.mgmt_interface)}$"
    physical = M.physical_nics((facts.get("nics") or {}).get("names") or [])
    if len(physical) <= 1:
        return None
    iface = (facts.get("default_route") or {}).get("iface", "")
    ips = ((facts.get("nics") or {}).get("ipv4") or {}).get(iface) or []
    if not ips:
        raise ConflictError(f"{node.name} has {len(physical)} network interfaces ({', '.join(physical)}) and no "
                            "default route to tell which one is the management network",
                            "set MGMT_INTERFACE in jhub.env (e.g. MGMT_INTERFACE=eno1), then re-run")
    return f"can-reach={ips[0]}"


@dataclass(frozen=True)
class PinAutodetect(Action):
    """Write the method into cni.yaml (only if it differs) and apply the file MicroK8s ships."""

    method: str

    def describe(self) -> str:
        return f"set IP_AUTODETECTION_METHOD={self.method} in {M.CNI_YAML} and apply it"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        text = host.run(["cat", "--", M.CNI_YAML], sudo=True).stdout
        new = set_autodetect_method(text, self.method)
        if new != text:
            host.put_bytes(new.encode(), M.CNI_YAML, mode=0o644, sudo=True)
        host.run(list(M.kubectl("apply", "-f", M.CNI_YAML)), sudo=True, timeout=120)


def plan(facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
    st = facts.get("status") or {}
    if not st.get("installed"):
        raise ConflictError(f"{node.name}: MicroK8s is not installed", "stage 10 installs it: "
                            "run `provision install` without --only/--from")
    cni = facts.get("cni_yaml")
    if cni is None:
        raise ConflictError(f"{node.name}: {M.CNI_YAML} is missing", "MicroK8s writes it at install; "
                            "check `microk8s inspect`, or reinstall MicroK8s")
    manifest = facts["bundle"]
    missing = [i for i in cni_images(cni) if manifest.image(i) is None]
    if missing:
        raise BundleError(f"Calico needs {', '.join(missing)}, which the bundle lacks",
                          "add them to the bundle (they are in the MicroK8s images list), run `provision "
                          "bundle manifest`, then re-run")
    actions: list[Action] = []
    want = desired_method(facts, settings, node)
    ds = facts.get("calico_ds")
    if want is not None and (autodetect_method(cni) != want or ds_method(ds) != want):
        actions.append(PinAutodetect(want))
    elif ds is None:
        actions.append(M.KubectlFileApply(M.CNI_YAML, "the Calico manifest MicroK8s ships"))
    problems = M.not_ready_pods(facts.get("pods"), facts.get("nodes"), "calico-node-", per_node=True)
    if actions or problems or not M.daemonset_rolled_out(ds):
        actions.append(M.WaitPods("kube-system", "calico-node-", True, float(settings.wait_timeout),
                                  "calico-node", daemonset="calico-node"))
    if not actions:
        return Plan.noop("calico-node ready on every node" + (f", {want}" if want else ""))
    return Plan(tuple(actions))


def verify(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    problems = M.not_ready_pods(facts.get("pods"), facts.get("nodes"), "calico-node-", per_node=True)
    checks = [Check("calico-node ready on every node", not problems, "; ".join(problems),
                    "microk8s kubectl -n kube-system describe pod -l k8s-app=calico-node")]
    want = desired_method(facts, settings, node)
    if want is not None:
        have = ds_method(facts.get("calico_ds"))
        checks.append(Check("calico IP autodetection pinned", have == want, f"{have}"))
    return checks

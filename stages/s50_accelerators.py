"""Stage 50: accelerators. NVIDIA: the GPU Operator from the bundled chart (stages/_gpu_operator.py).

gather (one round trip on the control node): the `gpu-operator` release and a digest of its deployed values,
the nodes (NFD/GFD labels, `nvidia.com/gpu` allocatable), the `nvidia` RuntimeClass, any NFD already running;
plus the bundled chart, whose every image must be in the bundle (checked before anything changes).
plan: nothing when chart version and values match and every GPU node has all its GPUs allocatable; else
`helm upgrade --install` (never a repository), the RuntimeClass, and a bounded wait for the GPUs.
ENABLE_NPU / ENABLE_IB are refused by preflight until this stage installs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision import facts as F
from provision.stage import Check, Node, Plan, Scope, Stage
from stages import _gpu_operator as G


class Accelerators(Stage):
    """Install the NVIDIA GPU Operator offline when USE_GPU_OPERATOR=true; wait for allocatable GPUs."""

    number = 50
    title = "Accelerators"
    scope = Scope.CLUSTER

    def probes(self) -> list[F.Probe]:
        from stages._helm import DIGEST_PY, parse_digest, parse_json, parse_release

        q = F.quoted
        pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
        ns = G.NAMESPACE
        return [
            F.Probe("release", pre + q("timeout 60 microk8s helm3 list -n {ns} --all -o json", ns=ns),
                    lambda raw: parse_release(raw, G.RELEASE)),
            F.Probe("deployed_digest", pre + q("timeout 60 microk8s helm3 get values {r} -n {ns} -o json 2>/dev/null"
                                               " | python3 -c {py}", r=G.RELEASE, ns=ns, py=DIGEST_PY), parse_digest),
            F.Probe("nodes", pre + "timeout 60 microk8s kubectl get nodes -o json", parse_json),
            F.Probe("runtime_class", pre + q("timeout 60 microk8s kubectl get runtimeclass {n} -o "
                                             "jsonpath={{.handler}} 2>/dev/null", n=G.RUNTIME_CLASS),
                    lambda raw: raw.out.strip() if raw.ok else None),
            F.Probe("nfd_pods", pre + "timeout 60 microk8s kubectl get pods -A -l app.kubernetes.io/name="
                    "node-feature-discovery -o json", parse_json),
        ]

    def gather(self, host: Any, settings: Any, node: Node) -> Mapping[str, Any]:
        if not settings.use_gpu_operator:
            return {"enabled": False}
        chart, _ = G.check_bundle(getattr(getattr(self, "context", None), "bundle_dir", None), settings)
        raw = F.gather(host, self.probes(), sudo=True)
        return {"enabled": True, "chart": chart, "release": raw["release"],
                "deployed_digest": raw["deployed_digest"], "gpus": G.gpu_nodes(raw["nodes"]),
                "runtime_class": raw["runtime_class"], "nfd_elsewhere": G.nfd_elsewhere(raw["nfd_pods"])}

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        if not facts.get("enabled"):
            return Plan.noop("GPU operator not enabled (USE_GPU_OPERATOR=false)")
        from stages._helm import HelmRelease

        return G.plan(facts, settings, HelmRelease)

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        if not facts.get("enabled"):
            return []
        release = facts.get("release")
        ok = isinstance(release, dict) and release.get("status") == "deployed"
        checks = [Check("gpu operator", ok, f"{G.RELEASE}: " + (f"{release['status']}, chart {release['chart_version']}"
                                                               if isinstance(release, dict) else "missing"),
                        f"microk8s helm3 status {G.RELEASE} -n {G.NAMESPACE}")]
        checks.append(Check("runtime class", facts.get("runtime_class") == "nvidia",
                            f"{G.RUNTIME_CLASS}: handler {facts.get('runtime_class') or 'missing'}",
                            "provision install --only 50"))
        for name, g in sorted((facts.get("gpus") or {}).items()):
            ok = bool(g["count"]) and g["allocatable"] == g["count"]
            checks.append(Check(f"gpus {name}", ok, f"{name}: {g['allocatable']}/{g['count'] or '?'} nvidia.com/gpu "
                                "allocatable", f"microk8s kubectl -n {G.NAMESPACE} get pods -o wide"))
        return checks

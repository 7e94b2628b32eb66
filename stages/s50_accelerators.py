"""Stage 50: accelerators. NVIDIA: the GPU Operator from the bundled chart (stages/_gpu_operator.py).

gather (one round trip on the control node): the `gpu-operator` release and a digest of its deployed values,
the nodes (NFD/GFD labels, `nvidia.com/gpu` allocatable), the `nvidia` RuntimeClass, any NFD already running;
plus the bundled chart, whose every image must be in the bundle (checked before anything changes).
plan: nothing when chart version and values match and every GPU node has all its GPUs allocatable; else
`helm upgrade --install` (never a repository), the RuntimeClass, and a bounded wait for the GPUs.
Each accelerator is its own part with its own facts, gathered in the same round trip: the GPU Operator's at
the top level (`enabled`); Ascend (stages/_ascend.py, under `npu`): the `accelerator` label on the NPU nodes,
the device plugin DaemonSet (image from the bundle, `imagePullPolicy: Never`) and a bounded wait for their
NPUs; InfiniBand (stages/_network_operator.py, under `ib`): the `network-operator` release, the
NicClusterPolicy `nic-cluster-policy` with the RDMA shared device plugin and a bounded wait for
`IB_RESOURCE_NAME` on every node NFD labels as having a Mellanox NIC. A part that is off gathers nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision import facts as F
from provision.stage import Check, Node, Plan, Scope, Stage
from stages import _ascend as A
from stages import _gpu_operator as G
from stages import _network_operator as N


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
        facts: dict[str, Any] = {"enabled": bool(settings.use_gpu_operator)}
        bundle_dir = getattr(getattr(self, "context", None), "bundle_dir", None)
        probes: list[F.Probe] = []
        if settings.use_gpu_operator:
            chart, _ = G.check_bundle(bundle_dir, settings)
            probes += self.probes()
        if settings.enable_ib:  # its own probes, plus `nodes` and `nfd_pods` when the GPU part does not ask for them
            have = {p.name for p in probes}
            probes += [p for p in self.probes() if p.name in ("nodes", "nfd_pods") and p.name not in have] + N.probes()
        if settings.enable_npu:
            npu_image = A.check_bundle(bundle_dir)
            probes += [p for p in A.probes() if p.name not in {q.name for q in probes}]
        raw = F.gather(host, probes, sudo=True) if probes else {}  # one round trip for every part
        if settings.enable_npu:
            facts["npu"] = A.gather(raw, settings, npu_image, getattr(getattr(self, "context", None), "nodes", ()))
        if settings.enable_ib:
            facts["ib"] = N.gather(raw, settings, bundle_dir)
        if settings.use_gpu_operator:
            facts.update({"chart": chart, "release": raw["release"],
                          "deployed_digest": raw["deployed_digest"], "gpus": G.gpu_nodes(raw["nodes"]),
                          "runtime_class": raw["runtime_class"], "nfd_elsewhere": G.nfd_elsewhere(raw["nfd_pods"])})
        return facts

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        from stages._helm import HelmRelease

        parts: list[Plan] = []
        if facts.get("enabled"):
            parts.append(G.plan(facts, settings, HelmRelease))
        if settings.enable_ib:
            parts.append(N.plan(facts["ib"], settings, HelmRelease))
        if settings.enable_npu:
            parts.append(A.plan(facts["npu"], settings))
        actions = [a for p in parts for a in p.actions]
        if actions:
            return Plan.of(*actions)
        if not parts:
            return Plan.noop("no accelerator enabled (USE_GPU_OPERATOR, ENABLE_NPU and ENABLE_IB are false)")
        return Plan.noop("; ".join(p.noop_reason for p in parts))

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        checks = self._verify_gpus(facts) if facts.get("enabled") else []
        checks += A.checks(facts["npu"]) if settings.enable_npu else []
        return checks + (N.verify(facts["ib"], settings) if settings.enable_ib else [])

    @staticmethod
    def _verify_gpus(facts: Mapping[str, Any]) -> list[Check]:
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

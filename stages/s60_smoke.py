"""Stage 60: smoke tests on every accelerator node (stages/_smoke.py), after stage 50 made them allocatable.

gather (one round trip on the control node): the nodes and the record of earlier passes.
plan: nothing when every GPU/NPU node passed with what it has now; else one action that runs the pods of the
nodes not yet proven (all of them when the run was asked for with `--only 60`), prints one line per check,
records the passes and removes its namespace, or keeps it and fails with the likely cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision import facts as F
from provision.stage import Check, Node, Plan, Scope, Stage
from stages import _microk8s as M
from stages import _smoke as S


class Smoke(Stage):
    """Prove each GPU/NPU node runs what a user's server will: CUDA/npu-smi pods, counts, no GPU leak to CPU pods."""

    number = 60
    title = "Smoke tests"
    scope = Scope.CLUSTER

    def probes(self) -> list[F.Probe]:
        pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
        return [
            F.Probe("nodes", pre + "timeout 60 microk8s kubectl get nodes -o json", M.parse_kube_json),
            F.Probe("record", pre + F.quoted("timeout 60 microk8s kubectl get configmap {n} -n {ns} -o json "
                                             "2>/dev/null", n=S.RECORD, ns=S.RECORD_NS), S.parse_record),
        ]

    def gather(self, host: Any, settings: Any, node: Node) -> Mapping[str, Any]:
        if not (settings.use_gpu_operator or settings.enable_npu):
            return {"enabled": False}
        extra = (getattr(self, "context", None) and self.context.extra) or {}
        raw = F.gather(host, self.probes(), sudo=True)
        if raw["nodes"] is None:
            from provision.errors import ProvisionError

            raise ProvisionError("`microk8s kubectl get nodes` failed on the control node",
                                 "check `microk8s status` and that stages 10-50 completed, then re-run")
        return {"enabled": True, "targets": S.targets(raw["nodes"], settings), "record": raw["record"],
                "run_id": extra.get("run_id", ""), "again": bool(extra.get("named")),
                "cuda_image": _cuda_image(self, settings)}

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        if not facts.get("enabled"):
            return Plan.noop("no accelerator enabled (USE_GPU_OPERATOR and ENABLE_NPU are false)")
        targets = facts["targets"]
        if not targets:
            return Plan.noop("no GPU or NPU node in the cluster yet")
        todo = S.stale(targets, facts["record"], facts["run_id"], facts["again"])
        if not todo:
            return Plan.noop(f"{len(targets)} accelerator node(s) passed with what they have now "
                             "(`provision install --only 60` tests them again)")
        images = S.Images(cuda=facts["cuda_image"], user=settings.singleuser_image)
        why = "asked with --only 60" if facts["again"] else "not yet proven with what they have now"
        return Plan.of(S.RunSmoke(tuple(todo), images, float(settings.wait_timeout), facts["run_id"], why))

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        if not facts.get("enabled"):
            return []
        return S.checks(facts["targets"], facts["record"])


def _cuda_image(stage: Stage, settings: Any) -> str:
    """The GPU Operator's image from the bundled chart (its validator carries vectorAdd); any image for NPU only."""
    if not settings.use_gpu_operator:
        return settings.singleuser_image
    from stages import _gpu_operator as G

    chart, _ = G.check_bundle(getattr(getattr(stage, "context", None), "bundle_dir", None), settings)
    return G.image_ref(G.merged(chart.values, G.release_values()).get("validator") or {}, chart.app_version)

"""Pure tests for stage 50 (NVIDIA GPU Operator): MicroK8s values, the images the real chart uses, the plan and
its idempotency, the wait's failure line. (InfiniBand: test_s50_ib_plan.py.)"""

from __future__ import annotations

import json

import pytest

from provision import facts as F
from provision.bundle import BundleFile, BundleImage, Manifest
from provision.config import Settings
from provision.errors import ConflictError
from provision.jupyterhub.values import values_digest
from stages import _gpu_operator as G
from stages import s00_preflight as P
from stages._helm import HelmRelease
from stages._microk8s import KubectlApply
from stages.s50_accelerators import Accelerators
from stages.s70_jupyterhub import parse_release
from tests.harness.bundle import GPU_OPERANDS, GPU_OPERATOR_CLUSTER, reference_charts
from tests.stages import stagefacts as sf

ON = Settings(use_gpu_operator=True)


@pytest.fixture(scope="module")
def chart() -> G.OperatorChart:
    charts = reference_charts()
    if charts is None:
        pytest.skip("shared/reference/charts (the real gpu-operator chart) not found")
    return G.open_operator_chart(charts / "gpu-operator-v25.10.0.tgz")


def node(name: str, gpus: int | None, alloc: int = 0, nfd: bool = True) -> dict:
    labels = {G.NFD_GPU_LABEL: "true"} if nfd else {}
    if gpus is not None:
        labels[G.GPU_COUNT_LABEL] = str(gpus)
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": "4", **({G.GPU: str(alloc)} if alloc else {})}}}


def facts(chart: G.OperatorChart, **over) -> sf.StrictFacts:
    base = {"enabled": True, "chart": chart, "release": None, "deployed_digest": None, "runtime_class": None,
            "nfd_elsewhere": False,
            "gpus": G.gpu_nodes({"items": [node("cp1", None, nfd=False), node("g1", 2, 2)]})}
    return sf.StrictFacts({**base, **over})


def converged(chart: G.OperatorChart) -> sf.StrictFacts:
    rel = {"status": "deployed", "chart_name": "gpu-operator", "chart_version": chart.version, "revision": "1"}
    return facts(chart, release=rel, deployed_digest=values_digest(G.release_values()), runtime_class="nvidia")


def test_microk8s_values_follow_the_reference():
    v = G.release_values()
    assert v["driver"] == {"enabled": False}
    assert v["toolkit"]["enabled"] is True
    assert {e["name"]: e["value"] for e in v["toolkit"]["env"]} == {
        "CONTAINERD_CONFIG": "/var/snap/microk8s/current/args/containerd-template.toml",
        "CONTAINERD_SOCKET": "/var/snap/microk8s/common/run/containerd.sock",
        "RUNTIME_CONFIG_SOURCE": "file=/var/snap/microk8s/current/args/containerd.toml"}
    assert v["nfd"] == {"enabled": True} and G.release_values(nfd=False)["nfd"] == {"enabled": False}


def test_images_of_the_real_chart_and_its_operands(chart):
    got = {(ref, where) for ref, where, _ in G.needed_images(chart, G.release_values())}
    assert got == {(r, "cluster") for r in GPU_OPERATOR_CLUSTER} | {(r, "gpu") for r in GPU_OPERANDS} | {
        ("nvcr.io/nvidia/gpu-operator:v25.10.0", "gpu")}   # the validator
    # NFD left to an existing installation: its image is not needed
    refs = {r for r, _, _ in G.needed_images(chart, G.release_values(nfd=False))}
    assert "registry.k8s.io/nfd/node-feature-discovery:v0.18.2" not in refs


def manifest(refs_roles: dict[str, set[str]]) -> Manifest:
    images = tuple(BundleImage(r, "images/x.tar", sf.digest(r), ("linux/amd64",), frozenset(roles))
                   for r, roles in refs_roles.items())
    return Manifest("1.30/stable", {"images/x.tar": BundleFile("images/x.tar", "0" * 64, 1)}, images=images)


def test_bundle_problems_name_each_missing_or_misplaced_image(chart):
    every = {"control-plane", "worker"}
    full = {**{r: every for r in GPU_OPERATOR_CLUSTER}, **{r: {"gpu"} for r in GPU_OPERANDS}}
    assert G.bundle_problems(manifest(full), chart, G.release_values()) == []
    gone = dict(full)
    del gone["nvcr.io/nvidia/k8s/container-toolkit:v1.18.0"]
    gone["nvcr.io/nvidia/gpu-operator:v25.10.0"] = {"gpu"}   # would be missing on the control node
    assert G.bundle_problems(manifest(gone), chart, G.release_values()) == [
        ("image nvcr.io/nvidia/gpu-operator:v25.10.0 (GPU Operator operator) is not marked for role(s) "
         "control-plane, worker in manifest.yaml"),
        "image nvcr.io/nvidia/k8s/container-toolkit:v1.18.0 (GPU Operator toolkit) is not in the bundle"]


def test_fresh_plan_installs_from_the_bundled_chart_adds_runtime_class_and_waits(chart):
    plan = Accelerators().plan(facts(chart), ON, sf.CONTROL)
    helm, rc, wait = plan.actions
    assert isinstance(helm, HelmRelease) and helm.chart_path == chart.path and helm.namespace == "gpu-operator"
    assert helm.values_digest == values_digest(G.release_values())
    assert "repo" not in helm.describe()
    assert isinstance(rc, KubectlApply) and "kind: RuntimeClass" in rc.manifest and "handler: nvidia" in rc.manifest
    assert isinstance(wait, G.WaitGpus) and wait.timeout == ON.wait_timeout


def test_converged_is_noop_and_a_value_change_upgrades(chart):
    plan = Accelerators().plan(converged(chart), ON, sf.CONTROL)
    assert plan.empty and "2 nvidia.com/gpu allocatable on 1 node" in plan.noop_reason
    changed = converged(chart)
    changed["deployed_digest"] = "0" * 64
    assert [type(a) for a in Accelerators().plan(changed, ON, sf.CONTROL).actions] == [HelmRelease, G.WaitGpus]
    short = converged(chart)
    short["gpus"] = G.gpu_nodes({"items": [node("g1", 2, 0)]})
    assert [type(a) for a in Accelerators().plan(short, ON, sf.CONTROL).actions] == [G.WaitGpus]


def test_disabled_is_noop_and_foreign_or_stuck_release_refused(chart):
    assert Accelerators().plan({"enabled": False}, Settings(), sf.CONTROL).noop_reason == \
        "no accelerator enabled (USE_GPU_OPERATOR, ENABLE_NPU and ENABLE_IB are false)"
    for rel, text in (({"status": "deployed", "chart_name": "other", "chart_version": "1", "revision": "1"},
                       "is chart other"),
                      ({"status": "pending-upgrade", "chart_name": "gpu-operator", "chart_version": "v25.10.0",
                        "revision": "2"}, "stuck in pending-upgrade")):
        with pytest.raises(ConflictError, match=text):
            Accelerators().plan(facts(chart, release=rel), ON, sf.CONTROL)


def test_release_parser_picks_the_gpu_operator_release():
    out = json.dumps([{"name": "gpu-operator", "chart": "gpu-operator-v25.10.0", "status": "deployed", "revision": "1"}])
    assert parse_release(F.Raw(out, 0), "gpu-operator")["chart_version"] == "v25.10.0"
    assert parse_release(F.Raw(out, 0)) is None   # stage 70's release is another one


def test_gpu_nodes_and_the_failure_line_name_node_cause_and_fix():
    nodes = {"items": [node("cp1", None, nfd=False), node("g1", None, 0)]}
    gpus = G.gpu_nodes(nodes)
    assert gpus == {"g1": {"count": None, "allocatable": 0}} and not G.gpus_ready(gpus)
    assert not G.gpus_ready({})
    pods = {"items": [{"metadata": {"name": "nvidia-container-toolkit-daemonset-abc"}, "spec": {"nodeName": "g1"},
                       "status": {"phase": "Running", "containerStatuses": [{"name": "toolkit", "state": {
                           "waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}}]}
    err = G.failure(gpus, pods, 600, lambda pod: "level=error msg=read-only file system")
    assert err.message.startswith("GPUs not allocatable after 600s: g1: 0 nvidia.com/gpu allocatable "
                                  "(nvidia-container-toolkit-daemonset-abc toolkit: CrashLoopBackOff")
    assert err.message.endswith("; its log: level=error msg=read-only file system)")
    assert "could not add the nvidia runtime" in err.hint and G.CONTAINERD_TEMPLATE in err.hint


def test_preflight_names_a_gpu_image_missing_from_the_bundle_before_anything_changes(tmp_path):
    """USE_GPU_OPERATOR=true with a bundle whose operand tarball is gone: preflight's bundle check names the image."""
    from provision.bundle import write_manifest
    from tests.harness.bundle import write_bundle

    if reference_charts() is None:
        pytest.skip("shared/reference/charts (the real gpu-operator chart) not found")
    root = write_bundle(tmp_path / "b", npu=False)
    fact = P.bundle_fact(root, ON)
    assert fact["ok"], fact["problems"]
    (root / "images" / "gpu-operator.tar").unlink()
    write_manifest(root, microk8s_channel="1.30/stable",
                   images={f"images/{n}.tar": ["control-plane", "worker"]
                           for n in ("microk8s-core", "jupyterhub", "singleuser", "gpu-operator-cluster",
                                     "network-operator")})  # every file there listed: verify is strict
    fact = P.bundle_fact(root, ON)
    assert not fact["ok"] and fact["hint"] == G.BUNDLE_HINT
    assert "image nvcr.io/nvidia/k8s/container-toolkit:v1.18.0 (GPU Operator toolkit) is not in the bundle" \
        in fact["problems"]
    assert P.bundle_fact(root, Settings())["ok"]   # without the GPU Operator the operands are not needed


def test_nfd_installed_once(chart):
    ours = {"items": [{"metadata": {"name": "gpu-operator-node-feature-discovery-master-1",
                                    "namespace": "gpu-operator"}}]}
    theirs = {"items": [{"metadata": {"name": "nfd-master-7f", "namespace": "node-feature-discovery"}}]}
    assert not G.nfd_elsewhere(ours) and not G.nfd_elsewhere(None) and G.nfd_elsewhere(theirs)
    (helm, *_) = Accelerators().plan(facts(chart, nfd_elsewhere=True), ON, sf.CONTROL).actions
    assert helm.values_digest == values_digest(G.release_values(nfd=False))
    import yaml

    assert yaml.safe_load(helm.values_yaml)["nfd"] == {"enabled": False}


def test_disabled_gather_touches_nothing():
    assert Accelerators().gather(None, Settings(), sf.CONTROL) == {"enabled": False}   # no round trip at all


def test_a_node_whose_nvidia_smi_lists_gpus_is_a_gpu_node_without_pci_facts():
    """nvidia-smi -L works (2 GPUs) but the PCI scan found none (a VM's passthrough, or the sim): preflight's
    "no node has an NVIDIA GPU" must not refuse USE_GPU_OPERATOR=true."""
    from tests.unit.test_preflight import GPU, ubuntu2404

    out = P.Preflight().verify_all({"cp1": ubuntu2404(nvidia_smi=GPU)}, ON, [sf.CONTROL])["cp1"]
    assert [c.name for c in out if not c.ok and not c.warning] == []

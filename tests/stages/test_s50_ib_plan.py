"""Pure tests for stage 50's InfiniBand part (the NVIDIA Network Operator, facts under `ib`): the images the real
chart and the NicClusterPolicy use, one NFD in the cluster, the policy built from IB_RESOURCE_NAME, the plan and
its idempotency, refusals, the wait's failure line."""

from __future__ import annotations

import json

import pytest

from provision.bundle import BundleFile, BundleImage, Manifest
from provision.config import Settings
from provision.errors import BundleError, ConflictError
from provision.jupyterhub.values import values_digest
from stages import _network_operator as N
from stages._helm import HelmRelease
from stages._microk8s import KubectlApply
from stages.s50_accelerators import Accelerators
from tests.harness.bundle import NETWORK_OPERATOR, reference_charts, write_charts
from tests.stages import stagefacts as sf

IB = Settings(enable_ib=True)                             # no GPU Operator: the Network Operator's own NFD
IB_GPU = Settings(use_gpu_operator=True, enable_ib=True)  # the GPU Operator's NFD serves both
RES = "rdma/rdma_shared_device_a"


@pytest.fixture(scope="module")
def chart() -> N.NetworkChart:
    charts = reference_charts()
    if charts is None:
        pytest.skip("shared/reference/charts (the real network-operator chart) not found")
    return N.open_network_chart(charts / "network-operator-25.7.0.tgz")


def node(name: str, ib: bool, alloc: int = 0) -> dict:
    return {"metadata": {"name": name, "labels": {N.IB_LABEL: "true"} if ib else {}},
            "status": {"allocatable": {"cpu": "4", **({RES: str(alloc)} if alloc else {})}}}


def ib_facts(chart: N.NetworkChart, settings: Settings = IB, **over) -> dict:
    base = {"chart": chart, "nfd": not settings.use_gpu_operator, "release": None, "deployed_digest": None,
            "policy": None, "nodes": N.ib_nodes({"items": [node("cp1", False), node("ib1", True)]}, RES)}
    return sf.StrictFacts({**base, **over})


def stage_facts(ib: dict) -> sf.StrictFacts:
    return sf.StrictFacts({"enabled": False, "ib": ib})


def converged(chart: N.NetworkChart, settings: Settings = IB) -> sf.StrictFacts:
    rel = {"status": "deployed", "chart_name": "network-operator", "chart_version": chart.version, "revision": "1"}
    live = json.loads(json.dumps(N.policy(chart, settings)))
    live["status"] = {"state": "ready"}
    return ib_facts(chart, settings, release=rel, deployed_digest=values_digest(N.release_values(True)), policy=live,
                    nodes=N.ib_nodes({"items": [node("cp1", False), node("ib1", True, 63)]}, RES))


def test_images_of_the_real_chart_and_the_policy(chart):
    assert [r for r, _ in N.needed_images(chart, nfd=True)] == NETWORK_OPERATOR
    assert "nvcr.io/nvidia/mellanox/node-feature-discovery:network-operator-v25.7.0" not in \
        [r for r, _ in N.needed_images(chart, nfd=False)]


def test_the_stand_in_chart_without_shared_reference_gives_the_same_images(tmp_path, monkeypatch):
    import tests.harness.bundle as tb

    monkeypatch.setattr(tb, "reference_charts", lambda: None)
    with pytest.warns(UserWarning):
        write_charts(tmp_path)
    stand_in = N.open_network_chart(tmp_path / "network-operator-25.7.0.tgz")
    assert (stand_in.version, stand_in.app_version) == ("25.7.0", "v25.7.0")
    assert [r for r, _ in N.needed_images(stand_in, nfd=True)] == NETWORK_OPERATOR


def manifest(refs_roles: dict[str, set[str]]) -> Manifest:
    images = tuple(BundleImage(r, "images/x.tar", sf.digest(r), ("linux/amd64",), frozenset(roles))
                   for r, roles in refs_roles.items())
    return Manifest("1.30/stable", {"images/x.tar": BundleFile("images/x.tar", "0" * 64, 1)}, images=images)


def test_bundle_problems_name_each_missing_or_misplaced_image(chart):
    every = {"control-plane", "worker"}
    assert N.bundle_problems(manifest({r: every for r in NETWORK_OPERATOR}), chart, nfd=True) == []
    gone = {NETWORK_OPERATOR[0]: {"control-plane"}, NETWORK_OPERATOR[1]: every}
    assert N.bundle_problems(manifest(gone), chart, nfd=True) == [
        ("image nvcr.io/nvidia/cloud-native/network-operator:v25.7.0 (Network Operator operator) is not marked for "
         "role(s) worker in manifest.yaml"),
        ("image nvcr.io/nvidia/mellanox/k8s-rdma-shared-dev-plugin:network-operator-v25.7.0 (Network Operator rdma "
         "shared device plugin) is not in the bundle")]


def small_bundle(root, refs: list[str]):
    """A bundle with the real network-operator chart and `refs` in one tarball for every node."""
    from provision.bundle import write_manifest
    from tests.harness.bundle import _multi_oci

    (root / "images").mkdir(parents=True)
    (root / "charts").mkdir()
    (root / "charts" / "network-operator-25.7.0.tgz").write_bytes((reference_charts() / "network-operator-25.7.0.tgz")
                                                                  .read_bytes())
    _multi_oci(root / "images" / "net.tar", refs)
    write_manifest(root, microk8s_channel="1.30/stable", images={"images/net.tar": ["control-plane", "worker"]})
    return root


def test_gather_is_one_round_trip_with_the_shared_probes(chart, tmp_path):
    from types import SimpleNamespace

    from provision.facts import CountingHost
    from tests.unit.fakes import FakeHost

    bundle = small_bundle(tmp_path, NETWORK_OPERATOR)
    nodes = json.dumps({"items": [node("ib1", True, 63)]})
    host = CountingHost(FakeHost("cp1", probes={"nodes": nodes, "nfd_pods": '{"items": []}', "ib_release": "[]",
                                                "ib_deployed_digest": "none\n", "ib_policy": ("", 1)}))
    stage = Accelerators()
    stage.context = SimpleNamespace(bundle_dir=bundle, nodes=())
    facts = stage.gather(host, IB, sf.CONTROL)
    assert host.round_trips == 1
    ib = facts["ib"]
    assert (ib["release"], ib["deployed_digest"], ib["policy"], ib["nfd"]) == (None, None, None, True)
    assert ib["nodes"] == {"ib1": 63} and ib["chart"].version == "25.7.0"


def test_gather_refuses_a_bundle_without_the_plugin_before_anything_changes(chart, tmp_path):
    small_bundle(tmp_path, NETWORK_OPERATOR[:2])
    raw = {"nfd_pods": {"items": []}, "ib_release": None, "ib_deployed_digest": None, "ib_policy": None,
           "nodes": {"items": []}}
    with pytest.raises(BundleError) as e:
        N.gather(raw, IB, tmp_path)
    assert "k8s-rdma-shared-dev-plugin:network-operator-v25.7.0 (Network Operator rdma shared device plugin) is not " \
           "in the bundle" in e.value.message and "control-plane,worker" in e.value.hint


def test_one_nfd_in_the_cluster():
    ours = {"items": [{"metadata": {"namespace": N.NAMESPACE}}]}
    foreign = {"items": [{"metadata": {"namespace": "kube-system"}}]}
    assert N.wants_own_nfd(IB, {"items": []}) and N.wants_own_nfd(IB, ours)
    assert not N.wants_own_nfd(IB, foreign)        # an NFD already runs: do not start a second one
    assert not N.wants_own_nfd(IB_GPU, {"items": []})  # the GPU Operator's NFD labels pci-15b3 itself
    assert N.release_values(False) == {"nfd": {"enabled": False, "deployNodeFeatureRules": False}}
    # and the GPU Operator does not yield its NFD to ours, or nobody would run one
    from stages import _gpu_operator as G
    assert not G.nfd_elsewhere(ours) and G.nfd_elsewhere(foreign)


def test_the_policy_is_named_nic_cluster_policy_and_holds_only_the_rdma_plugin(chart):
    p = N.policy(chart, Settings(enable_ib=True, use_gpu_operator=True, ib_resource_name="rdma/hca_shared"))
    assert p["metadata"]["name"] == "nic-cluster-policy" and list(p["spec"]) == ["rdmaSharedDevicePlugin"]
    plugin = p["spec"]["rdmaSharedDevicePlugin"]
    assert {k: plugin[k] for k in ("image", "repository", "version")} == {
        "image": "k8s-rdma-shared-dev-plugin", "repository": "nvcr.io/nvidia/mellanox",
        "version": "network-operator-v25.7.0"}
    assert isinstance(plugin["config"], str)   # a JSON string, copied verbatim into ConfigMap rdma-devices
    assert json.loads(plugin["config"]) == {"configList": [{
        "resourcePrefix": "rdma", "resourceName": "hca_shared", "rdmaHcaMax": 63,
        "selectors": {"vendors": ["15b3"], "linkTypes": ["infiniband"]}}]}


def test_fresh_plan_installs_from_the_bundled_chart_then_the_policy_then_waits(chart):
    plan = Accelerators().plan(stage_facts(ib_facts(chart)), IB, sf.CONTROL)
    helm, apply, wait = plan.actions
    assert isinstance(helm, HelmRelease) and helm.chart_path == chart.path
    assert (helm.release, helm.namespace) == ("network-operator", "nvidia-network-operator")
    assert helm.values_digest == values_digest(N.release_values(True)) and "repo" not in helm.describe()
    assert isinstance(apply, KubectlApply) and "kind: NicClusterPolicy" in apply.manifest
    assert isinstance(wait, N.WaitRdma) and (wait.resource, wait.timeout) == (RES, IB.wait_timeout)
    # with the GPU Operator: its NFD, so this chart's is off
    gpu = Accelerators().plan(stage_facts(ib_facts(chart, IB_GPU)), IB_GPU, sf.CONTROL).actions[0]
    assert gpu.values_digest == values_digest({"nfd": {"enabled": False, "deployNodeFeatureRules": False}})


def test_converged_is_noop_and_each_change_is_planned(chart):
    plan = Accelerators().plan(stage_facts(converged(chart)), IB, sf.CONTROL)
    assert plan.empty and plan.noop_reason == ("Network Operator 25.7.0 with these values; NicClusterPolicy "
                                               "nic-cluster-policy; rdma/rdma_shared_device_a allocatable on 1 "
                                               "InfiniBand node(s)")
    values = converged(chart)
    values["deployed_digest"] = "0" * 64
    assert [type(a) for a in N.plan(values, IB, HelmRelease).actions] == [HelmRelease, N.WaitRdma]
    renamed = Settings(enable_ib=True, ib_resource_name="rdma/other")
    other = converged(chart, renamed)
    assert N.plan(other, renamed, HelmRelease).empty
    assert [type(a) for a in N.plan(other, IB, HelmRelease).actions] == [KubectlApply, N.WaitRdma]
    short = converged(chart)
    short["nodes"] = {"ib1": 0}
    assert [type(a) for a in N.plan(short, IB, HelmRelease).actions] == [N.WaitRdma]
    nobody = converged(chart)
    nobody["nodes"] = {}
    assert [type(a) for a in N.plan(nobody, IB, HelmRelease).actions] == [N.WaitRdma]


def test_foreign_policy_foreign_or_stuck_release_are_refused(chart):
    theirs = converged(chart)
    theirs["policy"] = {"metadata": {"name": "nic-cluster-policy"}, "spec": {"ofedDriver": {}}}
    with pytest.raises(ConflictError) as e:
        N.plan(theirs, IB, HelmRelease)
    assert "was not made by provision" in e.value.message and "ENABLE_IB=false" in e.value.hint
    for rel, text in (({"status": "deployed", "chart_name": "other", "chart_version": "1", "revision": "1"},
                       "is chart other"),
                      ({"status": "pending-install", "chart_name": "network-operator", "chart_version": "25.7.0",
                        "revision": "1"}, "stuck in pending-install")):
        with pytest.raises(ConflictError) as e:
            N.plan(ib_facts(chart, release=rel), IB, HelmRelease)
        assert text in e.value.message


def test_verify_checks_each_ib_node(chart):
    checks = Accelerators().verify(stage_facts(converged(chart)), IB, sf.CONTROL)
    assert [(c.name, c.ok) for c in checks] == [("network operator", True), ("nic cluster policy", True),
                                                ("ib ib1", True)]
    assert checks[-1].detail == "ib1: 63 rdma/rdma_shared_device_a allocatable"
    short = converged(chart)
    short["nodes"] = {"ib1": 0}
    assert not N.verify(short, IB)[-1].ok


def test_wait_failure_names_node_plugin_pod_status_log_and_fix():
    pods = {"items": [{"metadata": {"name": "rdma-shared-dp-ds-x1"}, "spec": {"nodeName": "ib1"},
                       "status": {"phase": "Pending", "containerStatuses": [{"name": "rdma-shared-dp", "state": {
                           "waiting": {"reason": "ImagePullBackOff"}}}]}}]}
    err = N.failure({"ib1": 0, "ib2": 0, "ok": 63}, pods, RES, 20, lambda pod: "no devices matched")
    assert err.message == ("rdma/rdma_shared_device_a not allocatable after 20s: ib1: 0 rdma/rdma_shared_device_a "
                           "allocatable (rdma-shared-dp-ds-x1 rdma-shared-dp: ImagePullBackOff; its log: no devices "
                           "matched); ib2: 0 rdma/rdma_shared_device_a allocatable (no rdma-shared-dp-ds pod on it)")
    assert "link/infiniband" in err.hint and "re-run stage 20" in err.hint and "WAIT_TIMEOUT" in err.hint
    none = N.failure({}, {"items": []}, RES, 20)
    assert "no node was labelled as an InfiniBand node within 20s" in none.message and "NFD" in none.hint


def test_preflight_names_a_network_operator_image_missing_from_the_bundle(tmp_path):
    """ENABLE_IB=true with a bundle whose Network Operator tarball is gone: preflight's bundle check names each
    image before any node changes."""
    from provision.bundle import write_manifest
    from stages import s00_preflight as P
    from tests.harness.bundle import write_bundle

    if reference_charts() is None:
        pytest.skip("shared/reference/charts not found")
    root = write_bundle(tmp_path / "b", npu=False)
    assert P.bundle_fact(root, IB_GPU)["ok"]
    (root / "images" / "network-operator.tar").unlink()
    write_manifest(root, microk8s_channel="1.30/stable",
                   images={**{f"images/{n}.tar": ["control-plane", "worker"] for n in (
                       "microk8s-core", "jupyterhub", "singleuser", "gpu-operator-cluster")},
                       "images/gpu-operator.tar": ["gpu"]})
    fact = P.bundle_fact(root, IB_GPU)
    assert not fact["ok"] and fact["hint"] == N.BUNDLE_HINT
    assert fact["problems"] == [
        "image nvcr.io/nvidia/cloud-native/network-operator:v25.7.0 (Network Operator operator) is not in the bundle",
        ("image nvcr.io/nvidia/mellanox/k8s-rdma-shared-dev-plugin:network-operator-v25.7.0 (Network Operator rdma "
         "shared device plugin) is not in the bundle")]   # NFD: the GPU Operator's
    assert P.bundle_fact(root, Settings(use_gpu_operator=True))["ok"]


class _FakeKubectl:
    """Answers `microk8s kubectl get KIND ... -o json` and `logs` from fixed objects; counts the calls."""

    def __init__(self, objects: dict, log: str = ""):
        self.objects, self.log, self.argvs = objects, log, []

    def run(self, argv, **kw):
        from provision.hosts.base import Result

        self.argvs.append(list(argv))
        if "logs" in argv:
            return Result(tuple(argv), 0, self.log + "\n", "")
        kind = argv[argv.index("get") + 1]
        return Result(tuple(argv), 0, json.dumps(self.objects[kind]), "")


def test_wait_returns_when_every_ib_node_has_the_resource_and_times_out_naming_node_pod_and_log():
    from provision.errors import VerifyFailed
    from provision.stage import ApplyContext

    nfd = {"items": [{"metadata": {"name": "gpu-operator-node-feature-discovery-worker"},
                      "status": {"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
                                 "numberAvailable": 2}}]}
    ready = _FakeKubectl({"nodes": {"items": [node("cp1", False), node("ib1", True, 63)]}, "daemonsets": nfd})
    N.WaitRdma(RES, 5, interval=0.1).apply(ready, ApplyContext(Settings()))
    pods = {"items": [{"metadata": {"name": "rdma-shared-dp-ds-q7"}, "spec": {"nodeName": "ib1"},
                       "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]}
    short = _FakeKubectl({"nodes": {"items": [node("ib1", True, 0)]}, "daemonsets": nfd, "pods": pods},
                         log="the last line the plugin logged")
    with pytest.raises(VerifyFailed) as e:
        N.WaitRdma(RES, 0.3, interval=0.1).apply(short, ApplyContext(Settings()))
    assert e.value.message == ("rdma/rdma_shared_device_a not allocatable after 0s: ib1: 0 rdma/rdma_shared_device_a "
                               "allocatable (rdma-shared-dp-ds-q7 running; its log: the last line the plugin "
                               "logged)")
    assert ["microk8s", "kubectl", "logs", "-n", "nvidia-network-operator", "rdma-shared-dp-ds-q7", "--tail", "1"] \
        in [a[-8:] for a in short.argvs]
    assert len(short.argvs) <= 12   # bounded

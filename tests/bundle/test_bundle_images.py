"""provision.jupyterhub.bundle_images: the images a bundle must carry, derived from the settings by rendering the
REAL charts (shared/reference/charts) with the REAL helm v3.17.1 and the values stages 50 and 70 use."""

from __future__ import annotations

import pytest

from provision.errors import BundleError, ProvisionError
from provision.jupyterhub import bundle_images as B
from tests.harness import bundle as H
from tests.render.conftest import make_settings

EVERY = ("control-plane", "worker")
FULL = {"USE_GPU_OPERATOR": "true", "GPUS_PER_NODE": 8, "ENABLE_IB": "true", "ENABLE_NPU": "true",
        "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/srv/homes"}


@pytest.fixture(scope="module")
def tools():
    from tests.harness.tools import real_tool

    charts = H.reference_charts()
    if charts is None:
        pytest.skip("shared/reference/charts (the real chart packages) not found beside the repository")
    return charts, real_tool("helm")


_cache: dict = {}


def needs(tools, **env):
    key = tuple(sorted(env.items()))
    if key not in _cache:
        _cache[key] = {n.ref: n for n in B.needed_images(make_settings(**env), *tools)}
    return _cache[key]


def test_default_install_renders_hub_and_proxy_and_adds_user_core_and_sandbox_images(tools):
    n = needs(tools)
    hub, chp = n["quay.io/jupyterhub/k8s-hub:4.4.0"], n["quay.io/jupyterhub/configurable-http-proxy:5.2.0"]
    assert hub.reason == "jupyterhub 4.4.0 chart: Deployment/hub container hub" and hub.roles == EVERY
    assert chp.reason == "jupyterhub 4.4.0 chart: Deployment/proxy container chp"
    assert n["quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"].reason == "SINGLEUSER_IMAGE (user servers)"
    assert n["registry.k8s.io/pause:3.7"].reason == "SANDBOX_IMAGE (pod sandbox)"
    assert n["docker.io/calico/node:v3.25.1"].reason == "MicroK8s 1.30 core image"
    # our values switch off the pre-puller and the user scheduler/placeholders (air gap): the chart then renders
    # neither image-awaiter, nor pause, nor kube-scheduler, and the bundle need not carry them
    assert not [r for r in n if "image-awaiter" in r or "kube-scheduler" in r or r.startswith("registry.k8s.io/pause:3.10")]
    assert all(x.roles == EVERY for x in n.values()) and not [r for r in n if r.startswith("nvcr.io/")]


def test_the_chart_version_decides_the_tags(tools):
    n = needs(tools, Z2JH_CHART_VERSION="4.2.0", SINGLEUSER_IMAGE="registry.lab:5000/ds/notebook:2024.1")
    assert "quay.io/jupyterhub/configurable-http-proxy:4.6.3" in n and "quay.io/jupyterhub/k8s-hub:4.2.0" in n
    assert n["registry.lab:5000/ds/notebook:2024.1"].reason == "SINGLEUSER_IMAGE (user servers)"


def test_user_init_containers_and_profile_images_the_hub_starts_later_are_included(tools, monkeypatch):
    from provision.jupyterhub import values as V

    real = V.release_values

    def with_profile_image(*a, **kw):
        r = real(*a, **kw)
        r.values["singleuser"]["profileList"].append(
            {"display_name": "R", "slug": "r-studio", "kubespawner_override": {"image": "docker.io/rocker/rstudio:4.4"}})
        return r

    monkeypatch.setattr(V, "release_values", with_profile_image)
    n = {x.ref: x for x in B.needed_images(make_settings(SHARED_STORAGE_ENABLED="true",
                                                          SHARED_STORAGE_PATH="/srv/homes"), *tools)}
    assert n["docker.io/rocker/rstudio:4.4"].reason == "profile r-studio"
    user = n["quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"]
    assert "user server init container provision-fix-ownership" in user.reason


def test_gpu_operator_images_come_from_its_chart_and_cluster_policy_and_go_away_without_it(tools):
    n = needs(tools, USE_GPU_OPERATOR="true", GPUS_PER_NODE=8)
    op = n["nvcr.io/nvidia/gpu-operator:v25.10.0"]
    assert op.roles == EVERY and "gpu-operator v25.10.0 chart: Deployment/gpu-operator container gpu-operator" in op.reason
    assert "stage 60 GPU smoke test" in op.reason
    nfd = n["registry.k8s.io/nfd/node-feature-discovery:v0.18.2"]
    assert nfd.roles == EVERY and "DaemonSet/gpu-operator-node-feature-discovery-worker" in nfd.reason
    operands = {r: x for r, x in n.items() if "(ClusterPolicy operand)" in x.reason and x.roles == ("gpu",)}
    assert set(operands) == set(H.GPU_OPERANDS)
    assert not [r for r in n if "driver" in r or "dcgm:" in r]  # driver.enabled=false, dcgm off: not carried
    assert not set(n) - set(needs(tools)) - set(H.GPU_OPERATOR)  # turning it off removes exactly these


def test_infiniband_adds_the_network_operator_and_rdma_plugin_and_its_nfd_only_without_the_gpu_operator(tools):
    alone = needs(tools, ENABLE_IB="true", ENABLE_NPU="true")
    plugin = alone["nvcr.io/nvidia/mellanox/k8s-rdma-shared-dev-plugin:network-operator-v25.7.0"]
    assert plugin.reason == "Network Operator rdma shared device plugin (NicClusterPolicy)" and plugin.roles == EVERY
    assert "nvcr.io/nvidia/mellanox/node-feature-discovery:network-operator-v25.7.0" in alone
    assert "nvcr.io/nvidia/cloud-native/network-operator:v25.7.0" in alone
    full = needs(tools, **FULL)
    assert "nvcr.io/nvidia/mellanox/node-feature-discovery:network-operator-v25.7.0" not in full


def test_npu_adds_the_ascend_plugin_for_npu_nodes(tools):
    n = needs(tools, ENABLE_NPU="true")
    assert n["docker.io/library/ascend-k8sdeviceplugin:v3.0.0"].roles == ("npu",)
    assert "stage 60 NPU smoke test" in n["quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"].reason


def test_the_simulated_clusters_bundle_carries_every_derived_image_with_the_roles_stage_20_needs(tools):
    carried = {}
    for refs, roles, _ in H.TARBALLS.values():
        for r in refs:
            carried.setdefault(r, set()).update(roles)
    for ref, need in needs(tools, **FULL).items():
        assert ref in carried, f"{ref} ({need.reason}) is derived but not in the test bundle"
        assert set(need.roles) <= carried[ref] or set(EVERY) <= carried[ref], ref


def test_missing_chart_or_helm_is_one_error_with_the_fix(tools, tmp_path):
    with pytest.raises(BundleError, match="no jupyterhub chart 4.4.0 found"):
        B.needed_images(make_settings(), tmp_path, tools[1])
    with pytest.raises(ProvisionError, match="helm not found"):
        B.needed_images(make_settings(), tools[0], str(tmp_path / "nohelm"))

"""Our profiles and hooks through a real KubeSpawner into real pod specs, checked with kubernetes-validate."""

from __future__ import annotations

import asyncio

import pytest

from provision.jupyterhub.hub.pods import modify_pod_hook
from provision.jupyterhub.values import build_values, plain
from tests.hub.spawnerkit import kubespawner_from_values, pod_dict
from tests.render.conftest import make_settings


def build(**keys):
    return plain(build_values(make_settings(**keys)).values)


def pod_for(values, profile, admin=False, user="alice"):
    async def go():
        sp = kubespawner_from_values(values, username=user, admin=admin, modify_pod_hook=modify_pod_hook)
        sp.user_options = {"profile": profile}
        await sp.load_user_options()
        return await pod_dict(sp)

    return asyncio.run(go())


def validate(pod):
    import kubernetes_validate

    kubernetes_validate.validate(pod, "1.30.0", strict=True)


def notebook(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == "notebook")


def test_cpu_pod_hides_gpus():
    pod = pod_for(build(USE_GPU_OPERATOR="true", GPUS_PER_NODE=2), "cpu")
    validate(pod)
    env = {e["name"]: e.get("value") for e in notebook(pod)["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "runtimeClassName" not in pod["spec"]
    assert "nvidia.com/gpu" not in (notebook(pod)["resources"].get("limits") or {})


def test_gpu_pod_with_infiniband():
    pod = pod_for(build(USE_GPU_OPERATOR="true", GPUS_PER_NODE=8, ENABLE_IB="true"), "gpu-8")
    validate(pod)
    c = notebook(pod)
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert c["resources"]["limits"]["cpu"] == 2.0  # the profile kept the base limits (dicts merge, P12)
    assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
    assert c["securityContext"]["runAsUser"] == 1000
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_npu_pod_gets_driver_mounts_and_device_group():
    pod = pod_for(build(ENABLE_NPU="true", NPU_COUNT=2, NPU_DEVICE_GID=1001), "npu-2")
    validate(pod)
    c = notebook(pod)
    assert c["resources"]["limits"]["huawei.com/Ascend910"] == "2"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi"):
        assert mounts[path]["readOnly"] is True
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["ascend-npu-smi"]["hostPath"] == {"path": "/usr/local/bin/npu-smi", "type": "File"}
    assert pod["spec"]["securityContext"]["supplementalGroups"] == [1001]
    assert "home" in vols or any(v["name"].startswith("volume-") for v in pod["spec"]["volumes"])  # home kept
    cpu = pod_for(build(ENABLE_NPU="true"), "cpu")
    assert not any(v["name"].startswith("ascend-") for v in cpu["spec"]["volumes"])


def test_shared_npu_pod_sees_all_devices_without_reserving():
    pod = pod_for(build(ENABLE_NPU="true", NPU_SHARED="true", NPU_COUNT=0, NPU_VISIBLE_DEVICES="0,1,2,3"),
                  "npu-shared")
    validate(pod)
    env = {e["name"]: e.get("value") for e in notebook(pod)["env"]}
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3" and env["ASCEND_VISIBLE_DEVICES"] == "0,1,2,3"
    assert pod["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910"}
    assert not any(k.startswith("huawei.com/") for k in (notebook(pod)["resources"].get("limits") or {}))


@pytest.mark.parametrize("admin, sub_path", [(False, "alice"), (True, None)])
def test_student_work_own_folder_admins_all(admin, sub_path):
    values = build(SHARED_STORAGE_ENABLED="true", SHARED_STORAGE_PATH="/mnt/share/homes",
                   WORKSHOP_LESSONS_PATH="/mnt/share/lessons", WORKSHOP_STUDENT_WORK_PATH="/mnt/share/work")
    pod = pod_for(values, "cpu", admin=admin)
    validate(pod)
    mounts = {m["mountPath"]: m for m in notebook(pod)["volumeMounts"]}
    assert mounts["/home/jovyan/work"].get("subPath") == sub_path
    assert mounts["/home/jovyan/lessons"]["readOnly"] is True
    assert mounts["/home/jovyan"]["subPath"] == "home/alice"
    init = next(c for c in pod["spec"]["initContainers"] if c["name"] == "provision-fix-ownership")
    assert {m["mountPath"]: m["subPath"] for m in init["volumeMounts"]} == {"/mnt/home": "home/alice",
                                                                           "/mnt/work": "alice"}

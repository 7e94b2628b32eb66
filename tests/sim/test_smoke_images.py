"""The sim's smoke images (tests/harness/sim/smoke.py): a container sees GPUs only through the nvidia runtime
(allocated, or NVIDIA_VISIBLE_DEVICES), void means none, vectorAdd needs a device; npu-smi needs the Ascend runtime
and the NPUs the plugin named; anything else is `not found`."""

from __future__ import annotations

from tests.harness.sim import smoke

NODE = {"name": "g1", "gpus": 8, "gpu_model": "NVIDIA H100 80GB HBM3", "nvidia_runtime": True}


def pod(runtime: str = "nvidia") -> dict:
    return {"spec": {"runtimeClassName": runtime} if runtime else {}}


def ctr(cmd: list[str], **env: str) -> dict:
    return {"image": "nvcr.io/nvidia/gpu-operator:v25.10.0", "command": cmd,
            "env": [{"name": k, "value": v} for k, v in env.items()]}


def test_an_allocated_gpu_runs_vectoradd_and_nvidia_smi_shows_only_it():
    code, log = smoke.run(pod(), ctr(["sh", "-c", ("nvidia-smi --query-gpu=name,driver_version "
                                      "--format=csv,noheader && vectorAdd")]), dict(NODE, allocated_gpus=[3]))
    assert code == 0 and log.splitlines()[0] == "NVIDIA H100 80GB HBM3, 550.54.15" and "Test PASSED" in log


def test_visible_devices_all_void_and_no_runtime():
    code, log = smoke.run(pod(), ctr(["sh", "-c", "nvidia-smi -L"], NVIDIA_VISIBLE_DEVICES="all"), NODE)
    assert code == 0 and log.count("GPU ") == 8
    code, log = smoke.run(pod(), ctr(["sh", "-c", "nvidia-smi -L; exit 0"], NVIDIA_VISIBLE_DEVICES="void"), NODE)
    assert code == 0 and log == "sh: 1: nvidia-smi: not found\n"
    # without the nvidia runtime class nothing is injected, even with GPUs allocated (CDI, gpu-operator.md §1)
    code, log = smoke.run(pod(""), ctr(["sh", "-c", "vectorAdd"]), dict(NODE, allocated_gpus=[0]))
    assert code == 1 and "no CUDA-capable device is detected" in log
    # && stops at the first failure
    code, log = smoke.run(pod(), ctr(["sh", "-c", "nvidia-smi -L && vectorAdd"]), dict(NODE, nvidia_runtime=False))
    assert code == 127 and "vectorAdd" not in log


def test_npu_smi_needs_the_ascend_runtime_and_lists_the_named_npus():
    node = {"name": "n1", "npus": 4, "npu_model": "910B3", "ascend_runtime": True}
    c = {"image": "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0", "command": ["npu-smi", "info"],
         "env": [{"name": "ASCEND_VISIBLE_DEVICES", "value": "0-1,Ascend910-3"}]}
    code, log = smoke.run({"spec": {}}, c, node)
    assert code == 0 and log.count("910B3") == 3
    code, log = smoke.run({"spec": {}}, c, dict(node, ascend_runtime=False))
    assert code == 127 and "npu-smi: not found" in log


def test_other_containers_keep_their_generic_behaviour():
    assert smoke.run(pod(), ctr(["sleep", "infinity"]), NODE) is None
    assert smoke.run(pod(), {"image": "x"}, NODE) is None

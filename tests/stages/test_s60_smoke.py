"""Pure tests for stage 60: which nodes are tested and when again, the pods (one per GPU, the count pod, the CPU
pod; one NPU pod), busy devices left alone, and the lines that judge them (pass, and each failure's cause)."""

from __future__ import annotations

from provision.config import Settings
from stages import _smoke as S
from stages.s60_smoke import Smoke
from tests.stages import stagefacts as sf

GPU_ON = Settings(use_gpu_operator=True)
NPU_ON = Settings(enable_npu=True, npu_count=1)
IMAGES = S.Images(cuda="nvcr.io/nvidia/gpu-operator:v25.10.0", user="quay.io/jupyterhub/k8s-singleuser-sample:4.4.0")


def nodes(*specs: tuple[str, dict, dict], boot: str = "b1") -> dict:
    return {"items": [{"metadata": {"name": n, "labels": labels},
                       "status": {"allocatable": {"cpu": "8", **alloc}, "nodeInfo": {"bootID": boot}}}
                      for n, labels, alloc in specs]}


GPU_NODE = ("g1", {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "8"}, {"nvidia.com/gpu": "8"})
NPU_NODE = ("n1", {"accelerator": "huawei-Ascend910"}, {"huawei.com/Ascend910": "4"})
CPU_NODE = ("c1", {}, {})


def facts(targets, record=None, again=False, run_id="r2") -> dict:
    return {"enabled": True, "targets": targets, "record": record or {}, "run_id": run_id, "again": again,
            "cuda_image": IMAGES.cuda}


def test_targets_are_the_accelerator_nodes_of_the_enabled_kinds():
    both = Settings(use_gpu_operator=True, enable_npu=True, npu_count=1)
    ts = S.targets(nodes(GPU_NODE, NPU_NODE, CPU_NODE), both)
    assert [(t.node, t.kind, t.resource, t.count, t.listed) for t in ts] == [
        ("g1", "gpu", "nvidia.com/gpu", 8, 8), ("n1", "npu", "huawei.com/Ascend910", 4, None)]
    assert [t.node for t in S.targets(nodes(GPU_NODE, NPU_NODE), GPU_ON)] == ["g1"]
    assert S.targets(nodes(GPU_NODE, NPU_NODE), Settings()) == []
    # a reboot (boot id) or another GPU count makes it another node to prove
    again = S.targets(nodes(GPU_NODE, boot="b2"), GPU_ON)[0]
    assert again.fingerprint != S.targets(nodes(GPU_NODE), GPU_ON)[0].fingerprint


def test_plan_runs_the_unproven_nodes_then_nothing_and_again_when_asked():
    ts = S.targets(nodes(GPU_NODE, NPU_NODE), Settings(use_gpu_operator=True, enable_npu=True, npu_count=1))
    st = Smoke()
    plan = st.plan(facts(ts), GPU_ON, sf.CONTROL)
    [run] = plan.actions
    assert isinstance(run, S.RunSmoke) and run.targets == tuple(ts) and run.run_id == "r2"
    assert "smoke-test g1 (8 GPUs), n1 (4 NPUs)" in run.describe()
    record = {f"{t.node}.{t.kind}": {"fingerprint": t.fingerprint, "run": "r1", "lines": ["ok"]} for t in ts}
    noop = st.plan(facts(ts, record), GPU_ON, sf.CONTROL)
    assert noop.empty and "2 accelerator node(s) passed" in noop.noop_reason
    assert all(c.ok for c in st.verify(facts(ts, record), GPU_ON, sf.CONTROL))
    # --only 60: tested again unless this run already did
    assert len(st.plan(facts(ts, record, again=True), GPU_ON, sf.CONTROL).actions[0].targets) == 2
    done = {k: dict(v, run="r2") for k, v in record.items()}
    assert st.plan(facts(ts, done, again=True), GPU_ON, sf.CONTROL).empty
    assert st.plan({"enabled": False}, Settings(), sf.CONTROL).noop_reason.startswith("no accelerator enabled")
    assert st.plan(facts([]), GPU_ON, sf.CONTROL).noop_reason == "no GPU or NPU node in the cluster yet"


def test_pods_one_per_free_gpu_a_count_pod_and_a_cpu_pod():
    [t] = S.targets(nodes(GPU_NODE), GPU_ON)
    pods = S.manifests(t, 6, IMAGES, GPU_ON)
    names = [p["metadata"]["name"] for p in pods]
    assert names == [f"cuda-g1-{i}" for i in range(6)] + ["gpus-g1", "cpu-g1"]
    cuda = pods[0]["spec"]
    assert cuda["runtimeClassName"] == "nvidia" and cuda["nodeSelector"] == {"kubernetes.io/hostname": "g1"}
    assert cuda["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cuda["containers"][0]["command"] == ["sh", "-c", S.GPU_SCRIPT] and cuda["restartPolicy"] == "Never"
    cpu = pods[-1]["spec"]["containers"][0]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in cpu["env"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    busy = S.busy_devices({"items": [
        {"metadata": {"namespace": "jhub"}, "spec": {"nodeName": "g1", "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}, "status": {"phase": "Running"}},
        {"metadata": {"namespace": "jhub"}, "spec": {"nodeName": "g1", "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}, "status": {"phase": "Succeeded"}}]}, "nvidia.com/gpu")
    assert busy == {"g1": 2}
    [n] = S.targets(nodes(NPU_NODE), NPU_ON)
    [npu] = S.manifests(n, 4, IMAGES, NPU_ON)
    c = npu["spec"]["containers"][0]
    assert c["command"] == ["npu-smi", "info"] and c["resources"]["limits"]["huawei.com/Ascend910"] == "4"
    assert c["image"] == IMAGES.user and npu["spec"]["securityContext"] == {"supplementalGroups": [1000]}


def result(name, node, phase="Succeeded", log="", problem=""):
    return S.PodResult(name, node, phase, problem, log)


GPU_LOG = "NVIDIA H100 80GB HBM3, 580.65.06\n" + "Test PASSED\nDone\n"


def test_judge_gpu_lines_pass_and_fail_with_the_likely_cause():
    [t] = S.targets(nodes(GPU_NODE), GPU_ON)
    listed = "".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})\n" for i in range(8))
    good = [result(f"cuda-g1-{i}", "g1", log=GPU_LOG) for i in range(8)]
    good += [result("gpus-g1", "g1", log=listed), result("cpu-g1", "g1", log="sh: 1: nvidia-smi: not found\n")]
    ok, lines = S.judge(t, good, 8, 0)
    assert ok and lines == ["g1: 8/8 GPUs pass vectorAdd (NVIDIA H100 80GB HBM3, driver 580.65.06)",
                            "g1: nvidia-smi -L lists 8 GPUs, 8 nvidia.com/gpu allocatable",
                            "g1: a CPU-only pod sees no GPU (NVIDIA_VISIBLE_DEVICES=void)"]
    stuck = good[:7] + [result("cuda-g1-7", "g1", "Pending", problem="Pending; FailedScheduling: 0/1 nodes are "
                               "available: 1 Insufficient nvidia.com/gpu.")] + good[8:]
    ok, lines = S.judge(t, stuck, 8, 0)
    assert not ok and lines[0].startswith("g1: 7/8 GPUs pass vectorAdd")
    assert "FAILED: cuda-g1-7" in lines[0] and "likely: the node advertises fewer GPUs" in lines[0]
    leak = good[:9] + [result("cpu-g1", "g1", log=listed)]
    ok, lines = S.judge(t, leak, 8, 0)
    assert not ok and lines[-1] == ("g1: a CPU-only pod sees 8 GPUs — FAILED: CPU profiles would use GPUs nobody "
                                    "reserved")
    runtime = [result("cuda-g1-0", "g1", "Pending", problem='smoke: ContainerCreating; FailedCreatePodSandBox: '
                      'failed to get sandbox runtime: no runtime for "nvidia" is configured')]
    ok, lines = S.judge(t, runtime, 1, 7)
    assert not ok and "(7 in use)" in lines[0] and "likely: containerd on the node has no nvidia runtime" in lines[0]
    ok, lines = S.judge(t, [], 0, 8)
    assert lines[0] == "g1: all 8 GPUs in use by users' servers: vectorAdd not run"


NPU_LOG = """| npu-smi 24.1.rc1                  Version: 24.1.rc1                                                  |
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| 0     910B3               | OK            | 101.8       43                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3318 / 65536         |
| 1     910B3               | OK            | 101.8       43                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3318 / 65536         |
"""


def test_judge_npu_line_counts_the_npus_npu_smi_lists():
    t = S.Target("n1", "npu", "huawei.com/Ascend910", 2, None, "f")
    ok, lines = S.judge(t, [result("npu-n1", "n1", log=NPU_LOG)], 2, 0)
    assert ok and lines == ["n1: npu-smi info lists 2 × 910B3 (driver 24.1.rc1), 2 huawei.com/Ascend910 allocatable"]
    ok, lines = S.judge(t, [result("npu-n1", "n1", "Failed", log="sh: 1: npu-smi: not found\n")], 2, 0)
    assert not ok and "FAILED" in lines[0] and "likely: the container got no NPU" in lines[0]
    sick = NPU_LOG.replace("| OK            | 101.8", "| Alarm         | 101.8", 1)
    ok, lines = S.judge(t, [result("npu-n1", "n1", log=sick)], 2, 0)
    assert not ok and "FAILED: NPU 0 Alarm" in lines[0]


def test_results_take_the_last_warning_event_and_hopeless_pods_end_the_wait():
    pods = [{"metadata": {"name": "gpus-g1", "annotations": {"provision/smoke-node": "g1"}},
             "status": {"phase": "Pending", "containerStatuses": [
                 {"name": "smoke", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}]
    events = [{"type": "Warning", "involvedObject": {"name": "gpus-g1"}, "reason": "FailedCreatePodSandBox",
               "message": 'failed to get sandbox runtime: no runtime for "nvidia" is configured'}]
    [r] = S.results_from(pods, events)
    assert r.node == "g1" and "ContainerCreating" in r.problem and 'no runtime for "nvidia"' in r.problem
    assert S.hopeless(r) and not S.finished(r)

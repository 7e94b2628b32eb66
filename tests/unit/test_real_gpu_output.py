"""Our GPU parsers and stage 60's judge on output captured from a real NVIDIA H200 (tests/data/real-h200,
made by scripts/gpu_smoke_real.py on the real machine): the simulated nvidia-smi must not be the only
thing they have ever read."""

from __future__ import annotations

from pathlib import Path

from provision import facts as F
from provision.stage import Node, Role
from stages import _smoke as S
from stages.s00_preflight import node_roles

DATA = Path(__file__).resolve().parents[1] / "data" / "real-h200"


def real(name: str) -> str:
    return (DATA / name).read_text()


def test_preflight_reads_the_real_query_output():
    smi = F.parse_nvidia_smi(F.Raw(real("nvidia-smi-query.txt"), 0))
    assert smi == {"present": True, "ok": True, "error": "",
                   "gpus": [{"name": "NVIDIA H200", "driver_version": "580.159.04", "memory": "143771 MiB"}]}
    roles, line = node_roles({"nvidia_smi": smi, "nvidia_pci": 1}, Node("gpu-1", "10.0.0.5"))
    assert Role.GPU in roles and line == "roles: control-plane, gpu (1 GPU found)"


def test_stage_60_judges_the_real_smoke_output():
    node = "gpu-1"
    results = [S.PodResult(S.pod_name("cuda", node, 0), node, "Succeeded", log=real("cuda-0.log"), exit_code=0),
               S.PodResult(S.pod_name("gpus", node), node, "Succeeded", log=real("nvidia-smi-L.txt"), exit_code=0),
               S.PodResult(S.pod_name("cpu", node), node, "Succeeded", log="No devices were found\n", exit_code=0)]
    ok, lines = S.judge(S.Target(node, "gpu", S.GPU, 1, 1, ""), results, 1, 0)
    assert ok, lines
    assert lines[0] == "gpu-1: 1/1 GPUs pass vectorAdd (NVIDIA H200, driver 580.159.04)"
    assert lines[1] == "gpu-1: nvidia-smi -L lists 1 GPU, 1 nvidia.com/gpu allocatable"


def test_a_real_gpu_the_device_plugin_does_not_advertise_fails():
    node = "gpu-1"
    listed = S.PodResult(S.pod_name("gpus", node), node, "Succeeded", log=real("nvidia-smi-L.txt"), exit_code=0)
    ok, lines = S.judge(S.Target(node, "gpu", S.GPU, 0, 1, ""), [listed], 0, 0)
    assert not ok and "0 nvidia.com/gpu allocatable — FAILED" in lines[0]

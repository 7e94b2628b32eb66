"""Stage 60's GPU smoke test on a REAL NVIDIA machine, without Kubernetes: what each smoke pod runs, run on the
host, judged by the same code stage 60 uses (stages._smoke.judge), after the same facts preflight gathers
(provision.facts nvidia_smi / nvidia_pci → stages.s00_preflight.node_roles).

The pods run the GPU Operator validator's `vectorAdd` (the CUDA sample). That binary is not here, so
`--vector-add` is its equivalent: the CUDA driver API through ctypes (libcuda.so.1, no toolkit needed), a
vector-add kernel JIT-compiled from PTX, checked element by element, printing the sample's "Test PASSED".

    python3 scripts/gpu_smoke_real.py [--out DIR]     # DIR: raw outputs kept as parser fixtures

Uses only the standard library and this repository (no venv needed). Exit 0 when stage 60 would pass.
The CPU-profile check (NVIDIA_VISIBLE_DEVICES=void must hide every GPU) needs the NVIDIA container runtime,
which a bare host does not have: it is reported as not run, never as passed.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N = 50000  # elements, as the CUDA sample's vectorAdd
PTX = rb"""
.version 7.0
.target sm_52
.address_size 64
.visible .entry vadd(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 pn)
{
    .reg .pred p;
    .reg .b32 r<5>;
    .reg .b64 rd<11>;
    .reg .f32 f<4>;
    ld.param.u64 rd1, [pa];
    ld.param.u64 rd2, [pb];
    ld.param.u64 rd3, [pc];
    ld.param.u32 r1, [pn];
    mov.u32 r2, %ctaid.x;
    mov.u32 r3, %ntid.x;
    mov.u32 r4, %tid.x;
    mad.lo.s32 r2, r2, r3, r4;
    setp.ge.u32 p, r2, r1;
    @p bra DONE;
    cvta.to.global.u64 rd4, rd1;
    cvta.to.global.u64 rd5, rd2;
    cvta.to.global.u64 rd6, rd3;
    mul.wide.u32 rd7, r2, 4;
    add.s64 rd8, rd4, rd7;
    add.s64 rd9, rd5, rd7;
    add.s64 rd10, rd6, rd7;
    ld.global.f32 f1, [rd8];
    ld.global.f32 f2, [rd9];
    add.f32 f3, f1, f2;
    st.global.f32 [rd10], f3;
DONE:
    ret;
}
"""


def vector_add() -> int:
    """The CUDA sample's vectorAdd on device 0 (of what CUDA_VISIBLE_DEVICES leaves), through the driver API."""
    cu = ctypes.CDLL("libcuda.so.1")

    def check(rc: int, what: str) -> None:
        if rc:
            name = ctypes.c_char_p()
            cu.cuGetErrorName(rc, ctypes.byref(name))
            raise SystemExit(f"{what} failed: {name.value.decode() if name.value else rc}")

    print(f"[Vector addition of {N} elements]")
    check(cu.cuInit(0), "cuInit")
    dev, ctx, mod, fn = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    check(cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    check(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX + b"\0")), "cuModuleLoadData (PTX JIT)")
    check(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"vadd"), "cuModuleGetFunction")
    size = N * 4
    a = (ctypes.c_float * N)(*[i * 0.5 for i in range(N)])
    b = (ctypes.c_float * N)(*[(N - i) * 0.25 for i in range(N)])
    c = (ctypes.c_float * N)()
    da, db, dc = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
    for d in (da, db, dc):
        check(cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(size)), "cuMemAlloc")
    print("Copy input data from the host memory to the CUDA device")
    check(cu.cuMemcpyHtoD_v2(da, a, ctypes.c_size_t(size)), "cuMemcpyHtoD")
    check(cu.cuMemcpyHtoD_v2(db, b, ctypes.c_size_t(size)), "cuMemcpyHtoD")
    threads = 256
    blocks = (N + threads - 1) // threads
    print(f"CUDA kernel launch with {blocks} blocks of {threads} threads")
    n = ctypes.c_uint32(N)
    args = (ctypes.c_void_p * 4)(*[ctypes.cast(ctypes.byref(x), ctypes.c_void_p) for x in (da, db, dc, n)])
    check(cu.cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, 0, None, args, None), "cuLaunchKernel")
    check(cu.cuCtxSynchronize(), "cuCtxSynchronize")
    print("Copy output data from the CUDA device to the host memory")
    check(cu.cuMemcpyDtoH_v2(c, dc, ctypes.c_size_t(size)), "cuMemcpyDtoH")
    for i in range(N):
        want = struct.unpack("f", struct.pack("f", a[i] + b[i]))[0]
        if abs(c[i] - want) > 1e-5 * max(1.0, abs(want)):
            print(f"Result verification failed at element {i}!")
            return 1
    for d in (da, db, dc):
        cu.cuMemFree_v2(d)
    cu.cuCtxDestroy_v2(ctx)
    print("Test PASSED")
    print("Done")
    return 0


def sh(script: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})}, check=False)
    return r.returncode, r.stdout + r.stderr


def main(argv: list[str]) -> int:
    if "--vector-add" in argv:
        return vector_add()
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    from provision import facts as F
    from provision.hosts.local import LocalHost
    from provision.stage import Node
    from stages import _smoke as S
    from stages.s00_preflight import node_roles

    node = Node(os.uname().nodename, "127.0.0.1")
    started = time.monotonic()
    facts = F.gather(LocalHost(), [F.nvidia_smi, F.nvidia_pci])
    print(f"facts (1 probe script, {time.monotonic() - started:.2f} s): nvidia_smi={facts['nvidia_smi']} "
          f"nvidia_pci={facts['nvidia_pci']}")
    _, line = node_roles(facts, node)
    print(f"preflight: {line}")
    count = len(facts["nvidia_smi"]["gpus"])
    if not count:
        print("no GPU found: stage 60 would find no GPU node to test")
        return 1
    me = f"{sys.executable} {Path(__file__).resolve()} --vector-add"
    results, raw = [], {}
    for i in range(count):  # one pod per GPU, each seeing only its own (what the device plugin gives it)
        t0 = time.monotonic()
        rc, log = sh(S.GPU_SCRIPT.replace("vectorAdd", me), {"CUDA_VISIBLE_DEVICES": str(i)})
        print(f"cuda pod {i}: exit {rc} in {time.monotonic() - t0:.2f} s")
        results.append(S.PodResult(S.pod_name("cuda", node.name, i), node.name,
                                   "Succeeded" if rc == 0 else "Failed", log=log, exit_code=rc))
        raw[f"cuda-{i}.log"] = log
    rc, log = sh("nvidia-smi -L")
    results.append(S.PodResult(S.pod_name("gpus", node.name), node.name, "Succeeded" if rc == 0 else "Failed",
                               log=log, exit_code=rc))
    raw["nvidia-smi-L.txt"] = log
    raw["nvidia-smi-query.txt"] = sh("nvidia-smi --query-gpu=name,driver_version,memory.total "
                                     "--format=csv,noheader")[1]
    raw["nvidia-smi.txt"] = sh("nvidia-smi")[1]
    raw["lspci-nvidia.txt"] = sh("lspci -n -d 10de: 2>&1 || true")[1]
    target = S.Target(node.name, "gpu", S.GPU, count, count, "")
    _, lines = S.judge(target, results, count, 0)
    for ln in lines:
        if "CPU-only pod" in ln:
            ln = (f"{node.name}: a CPU-only pod (NVIDIA_VISIBLE_DEVICES=void) — NOT RUN: needs the NVIDIA "
                  "container runtime, which this bare host does not have")
        print(f"stage 60: {ln}")
    gpu_ok = all("CPU-only" in ln or "FAILED" not in ln for ln in lines)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in raw.items():
            (out / name).write_text(text)
    print("RESULT: " + ("PASS" if gpu_ok else "FAIL") + " (stage 60's GPU checks on real hardware)")
    return 0 if gpu_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

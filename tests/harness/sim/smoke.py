"""What a short-lived container of the smoke-test images prints when the kubelet stand-in runs it: the commands
`nvidia-smi`, `vectorAdd` (in the GPU Operator's image, whose validator runs it: gpu-operator.md §1) and
`npu-smi` exist in a container only when the runtime put them there, as on a real node:

- NVIDIA (CDI, the 25.10 default, gpu-operator.md §1): a pod gets the driver's tools and devices only through
  the `nvidia` runtime (runtimeClassName nvidia; a node whose containerd lacks that handler cannot even create
  the sandbox). The devices are the GPUs the device plugin allocated (`nvidia.com/gpu` limits), else those
  NVIDIA_VISIBLE_DEVICES names (`all`, indexes; `void`/`none`/empty: none). No device, no nvidia-smi.
  NVIDIA_DRIVER_CAPABILITIES (default compute,utility) must hold `utility` for nvidia-smi, `compute` for CUDA.
- Ascend (ascend.md §3-5): with the Ascend Docker Runtime the plugin sets ASCEND_VISIBLE_DEVICES to the NPUs it
  allocated and the runtime mounts those devices and /usr/local/bin/npu-smi; without it nothing is mounted.

A container's command is `sh -c SCRIPT` (commands joined by `&&`, `||` or `;`; `2>&1`-style redirections are
ignored) or one command. Anything else is `not found` (exit 127), as in an image without it. The output is
the pod's log (`kubectl logs`) and the last command's status its exit code.
"""

from __future__ import annotations

import re
import shlex

from .standins import npu_smi, nvidia_smi

VECTOR_ADD_OK = ("[Vector addition of 50000 elements]\nCopy input data from the host memory to the CUDA device\n"
                 "CUDA kernel launch with 196 blocks of 256 threads\nCopy output data from the CUDA device to the "
                 "host memory\nTest PASSED\nDone\n")
VECTOR_ADD_NO_DEVICE = ("[Vector addition of 50000 elements]\nFailed to allocate device vector A (error code "
                        "no CUDA-capable device is detected)!\n")
GPU_IMAGE_HINT = "gpu-operator:"   # the operator image carries the validator's vectorAdd


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}


def visible_gpus(pod: dict, container: dict, allocated: list[int], node_gpus: int, nvidia_runtime: bool) -> list[int]:
    """Indexes of the GPUs this container sees."""
    if pod["spec"].get("runtimeClassName") != "nvidia" or not nvidia_runtime:
        return []
    if allocated:
        return allocated
    want = env_of(container).get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if want == "all":
        return list(range(node_gpus))
    if want in ("", "void", "none"):
        return []
    return [int(i) for i in want.split(",") if i.strip().isdigit() and int(i) < node_gpus]


def visible_npus(container: dict, ascend_runtime: bool, npus: int) -> list[int]:
    if not ascend_runtime:
        return []
    ids = env_of(container).get("ASCEND_VISIBLE_DEVICES", "")
    out: set[int] = set()
    for part in ids.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            lo, hi = (int(x) for x in part.split("-"))
            out.update(range(lo, hi + 1))
        elif m := re.fullmatch(r"(?:Ascend(?:910|310B|310P|310)|npu)-(\d+)|(\d+)", part):
            out.add(int(m.group(1) or m.group(2)))
    return sorted(i for i in out if i < npus)


def _script(container: dict) -> str:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    return argv[2] if argv[:2] == ["sh", "-c"] and len(argv) > 2 else shlex.join(argv)


def is_smoke(container: dict) -> bool:
    """A container that runs one of the tools this module knows (cheap: checked before devices are worked out)."""
    return bool(set(re.findall(r"[\w-]+", _script(container))) & {"nvidia-smi", "vectorAdd", "npu-smi"})


def run(pod: dict, container: dict, node: dict) -> tuple[int, str] | None:
    """(exit code, log) of a smoke container on `node` (the kubelet's status: gpus, gpu_model, npus, npu_model,
    nvidia_runtime, ascend_runtime; `allocated_gpus`/`allocated_npus` for this container), or None when this is
    not a smoke-test container (the caller keeps its generic behaviour)."""
    if not is_smoke(container):
        return None
    script = _script(container)
    env = env_of(container)
    caps = env.get("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    gpus = visible_gpus(pod, container, node.get("allocated_gpus") or [], int(node.get("gpus") or 0),
                        bool(node.get("nvidia_runtime")))
    devs = [d for d in nvidia_smi.gpus({"name": node.get("name"), "gpus": node.get("gpus", 0),
                                        "gpu_model_key": "", "gpu_model": node.get("gpu_model") or "NVIDIA GPU"})
            if int(d["index"]) in gpus]
    npus = visible_npus(container, bool(node.get("ascend_runtime")), int(node.get("npus") or 0))
    has_image = GPU_IMAGE_HINT in container.get("image", "")

    def one(words: list[str]) -> tuple[int, str]:
        cmd = words[0]
        if cmd == "nvidia-smi" and devs and ("utility" in caps or caps == "all"):
            return nvidia_smi.render(devs, words[1:])
        if cmd == "vectorAdd" and has_image:
            ok = devs and ("compute" in caps or caps == "all")
            return (0, VECTOR_ADD_OK) if ok else (1, VECTOR_ADD_NO_DEVICE)
        if cmd == "npu-smi" and npus:
            return npu_smi.render(npus, node.get("npu_model") or "910B3", words[1:])
        if cmd in ("true", ":"):
            return 0, ""
        if cmd == "echo":
            return 0, " ".join(words[1:]) + "\n"
        if cmd == "exit":
            return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0, ""
        return 127, f"sh: 1: {cmd}: not found\n"

    code, out = 0, ""
    op = ";"
    for part in re.split(r"(&&|\|\||;)", script):
        part = part.strip()
        if part in ("&&", "||", ";"):
            op = part
            continue
        if not part or (op == "&&" and code) or (op == "||" and not code):
            continue
        toks = [t for t in shlex.split(part) if not re.fullmatch(r"\d?>&?\S*|<\S*", t)]
        if not toks:
            continue
        code, text = one(toks)
        out += text
        if toks[0] == "exit":
            break
    return code, out

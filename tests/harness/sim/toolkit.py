"""What the NVIDIA container toolkit operand (nvidia-ctk-installer v1.18, gpu-operator.md §1) does to a node:
write the `nvidia` runtime into a containerd drop-in (/etc/containerd/conf.d/99-nvidia.toml), make the
top-level config named by CONTAINERD_CONFIG import the drop-in directory (1.18 overwrites `imports`), then
signal containerd over CONTAINERD_SOCKET. The kubelet stand-in (daemon.py) runs it when the control plane
reports a toolkit pod on this node and reports `nvidia_runtime` from the files, so the device plugin's GPUs
become allocatable only once MicroK8s' own template imports the runtime, as on a real node.

Defaults are the operator's (/etc/containerd/config.toml, /run/containerd/containerd.sock): on MicroK8s the
socket is elsewhere, so a release without MicroK8s' toolkit env fails to signal and never configures the
runtime. Approximation: containerd is not really signalled (its effective config is not re-read).
The fault `toolkit-readonly` (faults.toolkit_cannot_write) makes the config unwritable.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import faults, paths

DROPIN_DIR = "/etc/containerd/conf.d"
DROPIN = DROPIN_DIR + "/99-nvidia.toml"
IMPORTS = f'imports = ["{DROPIN_DIR}/*.toml"]'
DROPIN_TEXT = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
          privileged_without_host_devices = false
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
            BinaryName = "/usr/local/nvidia/toolkit/nvidia-container-runtime"
"""


def configure(env: dict[str, str]) -> dict:
    """Run the installer's containerd setup with the container's env; {"ok": bool, "error": text}."""
    config = env.get("CONTAINERD_CONFIG") or env.get("RUNTIME_CONFIG") or "/etc/containerd/config.toml"
    socket = env.get("CONTAINERD_SOCKET") or env.get("RUNTIME_SOCKET") or "/run/containerd/containerd.sock"
    in_pod = "/runtime/config-dir/" + Path(config).name   # the operator mounts the config's directory there
    if faults.armed("toolkit-readonly"):
        return {"ok": False, "error": f'level=error msg="error running nvidia-toolkit: unable to setup runtime: '
                f'unable to write config: open {in_pod}: read-only file system"'}
    try:
        Path(DROPIN_DIR).mkdir(parents=True, exist_ok=True)
        Path(DROPIN).write_text(DROPIN_TEXT)
        top = Path(config)
        text = top.read_text() if top.exists() else ""
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("imports")]
        top.parent.mkdir(parents=True, exist_ok=True)
        top.write_text("\n".join([IMPORTS, *lines]) + "\n")
    except OSError as e:
        return {"ok": False, "error": f'level=error msg="error running nvidia-toolkit: unable to setup runtime: {e}"'}
    if not os.path.exists(socket):
        sock = "/runtime/sock-dir/" + Path(socket).name
        return {"ok": False, "error": 'level=error msg="error running nvidia-toolkit: unable to setup runtime: '
                f'unable to restart containerd: unable to dial: dial unix {sock}: connect: no such file or '
                'directory"'}
    return {"ok": True, "error": ""}


def configured() -> bool:
    """MicroK8s' containerd template imports a drop-in that defines the `nvidia` runtime."""
    try:
        template = Path(paths.ARGS, "containerd-template.toml").read_text()
        dropin = Path(DROPIN).read_text()
    except OSError:
        return False
    return IMPORTS in template.splitlines() and "containerd.runtimes.nvidia]" in dropin

"""What an NPU node has for Huawei's Ascend device plugin (ascend.md §3), as the kubelet stand-in reports it:

* the Ascend Docker Runtime: a stand-in binary at the installer's path on every NPU host (install.py; remove it
  with `remove_runtime(root)` to model a node where it was never installed), and whether containerd RUNS with it
  as its default runtime — read from args/containerd.toml, which MicroK8s renders from the template only when
  containerd starts, so an edited but not restarted template has no effect, as on a real node;
* the host directories that pods mount with `hostPath.type: Directory` and provision must create
  (HOSTPATH_DIRS): a missing one fails the pod's volume setup (controllers.py, event FailedMount), as the real
  kubelet's type check does. Other hostPaths are taken to exist.

The device plugin gives NPUs only where it runs: its DaemonSet selects the `accelerator` label, its image must
be on the node (imagePullPolicy Never -> ErrImageNeverPull), and its log directory must exist. Without the
Ascend runtime the real plugin still registers the NPUs, in its "origin mount" mode (no ASCEND_DOCKER_RUNTIME=True
in its environment): they are allocatable, but a container gets ASCEND_VISIBLE_DEVICES honoured only through the
runtime, so the sim's containers then see no NPU and no npu-smi (smoke.py); stage 60's smoke test shows that.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import paths

RUNTIME_BIN = "/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime"
LOG_DIR = "/var/log/mindx-dl/devicePlugin"
HOSTPATH_DIRS = (LOG_DIR,)
STANDIN = ("#!/bin/sh\n# provision-sim stand-in for the Ascend Docker Runtime (an OCI runtime wrapping runc)\n"
           'exec runc "$@"\n')


def place_runtime(root: Path | str) -> None:
    """Put the stand-in runtime where the installer puts it (under a host's root or seed directory)."""
    dest = Path(root) / RUNTIME_BIN.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(STANDIN)
    os.chmod(dest, 0o755)


def remove_runtime(root: Path | str) -> None:
    """A node without the Ascend Docker Runtime (never installed, or uninstalled)."""
    Path(root, RUNTIME_BIN.lstrip("/")).unlink(missing_ok=True)


def configured() -> bool:
    """containerd runs every container through the Ascend runtime: its running config makes `ascend` (with the
    runtime's path as BinaryName) the default runtime, and the binary is there."""
    try:
        text = Path(paths.ARGS, "containerd.toml").read_text()
    except OSError:
        return False
    default = re.search(r'^\s*default_runtime_name\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return bool(default) and default.group(1) == "ascend" and f'BinaryName = "{RUNTIME_BIN}"' in text \
        and os.access(RUNTIME_BIN, os.X_OK)


def host_dirs() -> dict[str, bool]:
    return {p: os.path.isdir(p) for p in HOSTPATH_DIRS}

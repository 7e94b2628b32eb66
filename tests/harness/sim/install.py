"""Install the stand-ins into a test host before it boots (a Harness pre_boot_hook): files written under
the seed directory appear in the host's private root. Real paths: /usr/bin/snap, /usr/bin/systemctl,
/usr/sbin/ufw, /usr/bin/firewall-cmd, /usr/bin/nvidia-smi (GPU hosts), /usr/local/bin/npu-smi (NPU hosts,
the path ascend.md §4 lists); `microk8s` appears in /snap/bin only when the microk8s snap is installed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from . import ascend, paths
from .spec import SimSpec, host_config

PROGRAMS = {"snap": "/usr/bin/snap", "systemctl": "/usr/bin/systemctl"}
ENTRY = {"snap": ("snap", "main"), "systemctl": ("systemctl", "main"), "ufw": ("firewall", "ufw"),
         "firewall-cmd": ("firewall", "firewall_cmd"), "nvidia-smi": ("nvidia_smi", "main"),
         "npu-smi": ("npu_smi", "main")}


def launcher(python: str, module: str, func: str) -> str:
    """A /bin/sh launcher: the harness's Python (it has kubernetes-validate, jsonschema) when this user
    may run it, else the host's /usr/bin/python3 (non-root users cannot enter a venv under /root)."""
    code = (f"import os, sys; sys.path.insert(0, {paths.SIM_LIB!r}); "
            f"from provision_sim.standins.{module} import {func}; "
            f"sys.exit({func}([os.environ.pop('SIM_ARGV0', 'x')] + sys.argv[1:]) if {func!r} == 'entry' "
            f"else {func}(sys.argv[1:]))")
    return (f"#!/bin/sh\nP={shlex.quote(python)}\n[ -x \"$P\" ] || P=/usr/bin/python3\n"
            f"SIM_ARGV0=\"$0\" exec \"$P\" -c {shlex.quote(code)} \"$@\"\n")


def install_into_seed(seed: Path, cfg: dict) -> None:
    """Write the package copy, the programs and host.json under `seed` (the future root of the host)."""
    lib = seed / paths.SIM_LIB.lstrip("/") / "provision_sim"
    if lib.exists():
        shutil.rmtree(lib)
    shutil.copytree(Path(__file__).parent, lib, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    programs = dict(PROGRAMS)
    programs["ufw" if cfg["firewall"] == "ufw" else "firewall-cmd"] = \
        "/usr/sbin/ufw" if cfg["firewall"] == "ufw" else "/usr/bin/firewall-cmd"
    if cfg.get("gpus"):
        programs["nvidia-smi"] = "/usr/bin/nvidia-smi"
    if cfg.get("npus"):
        programs["npu-smi"] = "/usr/local/bin/npu-smi"
        driver = seed / "usr/local/Ascend/driver"
        driver.mkdir(parents=True, exist_ok=True)
        (driver / "version.info").write_text("Version=24.1.rc1\n")
        (seed / "usr/local/dcmi").mkdir(parents=True, exist_ok=True)
        ascend.place_runtime(seed)  # the Ascend Docker Runtime (ascend.remove_runtime leaves a node without it)
    for name, target in programs.items():
        module, func = ENTRY[name]
        dest = seed / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(launcher(cfg["python"], module, func))
        os.chmod(dest, 0o755)
    conf = seed / paths.SIM_CONFIG.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps(cfg, indent=1))


def pre_boot_hook(spec: SimSpec, python: str | None = None):
    """A Harness.pre_boot_hooks entry installing the stand-ins per `spec`."""
    def hook(harness, host, seed: Path) -> None:
        cfg = host_config(spec, host.name, host.index, host.address, python or sys.executable)
        install_into_seed(seed, cfg)
        host.extra["sim"] = cfg
    return hook


# sysfs cannot be written and the seed is copied before /sys is mounted: an IB host gets a copy of its PCI device
# list (links to the real devices) plus the HCA's vendor/device/class files, bound over /sys/bus/pci/devices.
PCI_SCRIPT = r"""set -eu
t=/run/sim-pci
mkdir -p "$t"
for l in /sys/bus/pci/devices/*; do [ -e "$l" ] || continue; ln -sfn "$(readlink -f "$l")" "$t/${l##*/}"; done
mkdir -p "$t/$1"
echo "$2" > "$t/$1/vendor"; echo "$3" > "$t/$1/device"; echo "$4" > "$t/$1/class"
mountpoint -q /sys/bus/pci/devices || mount --bind "$t" /sys/bus/pci/devices
"""


def expose_pci_devices(harness, hosts) -> None:
    """A Harness.post_up_hooks entry: the IB hosts' HCA appears where preflight's PCI probe looks."""
    for host in hosts:
        for dev in (host.extra.get("sim") or {}).get("rdma") or []:
            host.exec(["sh", "-c", PCI_SCRIPT, "sh", dev["pci"], "0x" + dev["vendor"], "0x" + dev["deviceID"],
                       dev["class"]])


def enable(harness, spec: SimSpec | None = None) -> None:
    """Make every host this harness starts from now on a simulated node."""
    harness.pre_boot_hooks.append(pre_boot_hook(spec or SimSpec()))
    harness.post_up_hooks.append(expose_pci_devices)
    harness.options["sim"] = True

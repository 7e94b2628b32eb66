"""Install the stand-ins into a test host before it boots (a Harness pre_boot_hook): files written under
the seed directory appear in the host's private root. Real paths: /usr/bin/snap, /usr/bin/systemctl,
/usr/sbin/ufw, /usr/bin/firewall-cmd, /usr/bin/nvidia-smi (GPU hosts), /usr/local/bin/npu-smi (NPU hosts,
the path ascend.md §4 lists); `microk8s` appears in /snap/bin only when the microk8s snap is installed."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from . import paths
from .spec import SimSpec, host_config

PROGRAMS = {"snap": "/usr/bin/snap", "systemctl": "/usr/bin/systemctl"}
ENTRY = {"snap": ("snap", "main"), "systemctl": ("systemctl", "main"), "ufw": ("firewall", "ufw"),
         "firewall-cmd": ("firewall", "firewall_cmd"), "nvidia-smi": ("nvidia_smi", "main"),
         "npu-smi": ("npu_smi", "main")}


def _wrapper(python: str, module: str, func: str) -> str:
    return (f"#!{python}\nimport sys\nsys.path.insert(0, {paths.SIM_LIB!r})\n"
            f"from provision_sim.standins.{module} import {func}\nsys.exit({func}(sys.argv[1:]))\n")


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
    for name, target in programs.items():
        module, func = ENTRY[name]
        dest = seed / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_wrapper(cfg["python"], module, func))
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


def enable(harness, spec: SimSpec | None = None) -> None:
    """Make every host this harness starts from now on a simulated node."""
    harness.pre_boot_hooks.append(pre_boot_hook(spec or SimSpec()))
    harness.options["sim"] = True

"""What a simulated host has: accelerators per node from `--gpu NODE=COUNTxMODEL` / `--npu NODE=...`, an
InfiniBand HCA from `--ib NODE`."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

# One ConnectX-6 (PCI 15b3:101b, class 0x0207 InfiniBand controller) with its IPoIB port ib0, as the RDMA shared
# device plugin's selectors see it (vendor, deviceID, driver, ifName, linkType).
IB_DEVICE = {"pci": "0000:81:00.0", "vendor": "15b3", "deviceID": "101b", "class": "0x020700", "driver": "mlx5_core",
             "ifName": "ib0", "linkType": "infiniband"}
NPU_RESOURCES = (("310P", "huawei.com/Ascend310P"), ("310", "huawei.com/Ascend310"), ("910", "huawei.com/Ascend910"))


@dataclass
class SimSpec:
    gpus: dict[str, tuple[int, str]] = field(default_factory=dict)   # node ref -> (count, model)
    npus: dict[str, tuple[int, str]] = field(default_factory=dict)
    firewalld: set[str] = field(default_factory=set)                  # node refs with firewalld instead of ufw
    ib: set[str] = field(default_factory=set)                         # node refs with an InfiniBand HCA (IB_DEVICE)
    timing: float = 0.0   # real delays (services.REAL_SECONDS) x this factor; 0 = fast (--sim-timing real:F)

    @staticmethod
    def parse_timing(text: str) -> float:
        """`fast` -> 0, `real` -> 1, `real:F` -> F (e.g. real:0.1: a 120 s snap install takes 12 s)."""
        m = re.fullmatch(r"fast|real(?::(\d+(?:\.\d+)?))?", text)
        if not m:
            raise ValueError(f"expected fast, real or real:FACTOR (e.g. real:0.1), got {text!r}")
        return 0.0 if text == "fast" else float(m.group(1) or 1)

    @staticmethod
    def parse_device(text: str) -> tuple[str, int, str]:
        m = re.fullmatch(r"([\w.-]+)=(\d+)x([\w.-]+)", text)
        if not m:
            raise ValueError(f"expected NODE=COUNTxMODEL (e.g. node2=8xH100), got {text!r}")
        return m.group(1), int(m.group(2)), m.group(3)


def matches(ref: str, name: str, index: int) -> bool:
    """A node ref names a host by name (h2), or by position as nodeN / N (1-based)."""
    return ref == name or ref in (f"node{index}", str(index))


@functools.lru_cache(maxsize=1)
def real_tools_dir() -> str:
    """Where the verified real kubectl/helm are (tests/harness/tools.py): the snap stand-in links
    $SNAP/kubectl to them, as the real snap ships its own kubectl. Missing tools stop the harness."""
    from ..tools import BIN, TOOLS, _verified
    missing = [n for n in TOOLS if not _verified(n)]
    if missing:
        raise RuntimeError(f"real {', '.join(missing)} missing or altered in {BIN}: run "
                           "`python -m tests.harness tools` (scripts/test.sh does)")
    if not (BIN.parent / "chp" / "node_modules" / ".bin" / "configurable-http-proxy").exists():   # runtime.py
        raise RuntimeError(f"configurable-http-proxy missing in {BIN.parent / 'chp'}: run `npm install --prefix "
                           f"{BIN.parent / 'chp'} configurable-http-proxy@5.2.0` (scripts/test.sh does)")
    return str(BIN)


def host_config(spec: SimSpec, name: str, index: int, ip: str, python: str) -> dict:
    from .standins.nvidia_smi import MODELS
    cfg: dict = {"name": name, "ip": ip, "python": python, "gpus": 0, "npus": 0}
    for ref, (count, model) in spec.gpus.items():
        if matches(ref, name, index):
            cfg.update(gpus=count, gpu_model_key=model, gpu_model=MODELS.get(model, (model,))[0])
    for ref, (count, model) in spec.npus.items():
        if matches(ref, name, index):
            resource = next(r for k, r in NPU_RESOURCES if k in model or k == "910")
            cfg.update(npus=count, npu_model=model, npu_resource=resource)
    cfg["rdma"] = [dict(IB_DEVICE)] if any(matches(r, name, index) for r in spec.ib) else []
    cfg["timing"] = spec.timing
    cfg["tools"] = real_tools_dir()
    cfg["firewall"] = "firewalld" if any(matches(r, name, index) for r in spec.firewalld) else "ufw"
    return cfg

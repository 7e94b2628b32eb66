"""`nvidia-smi` stand-in on GPU hosts: `-L` and `--query-gpu=... --format=csv[,noheader][,nounits]`
(gpu-operator.md §4). Memory: H100 80GB reports 81559 MiB, A100 80GB 81920 MiB (the reference samples)."""

from __future__ import annotations

import hashlib
import sys

MODELS = {"H100": ("NVIDIA H100 80GB HBM3", 81559), "A100": ("NVIDIA A100-SXM4-80GB", 81920),
          "L40S": ("NVIDIA L40S", 46068), "V100": ("Tesla V100-SXM2-32GB", 32768)}
DRIVER = "550.54.15"
UNITS = {"memory.total": "MiB", "memory.used": "MiB", "memory.free": "MiB", "power.draw": "W",
         "temperature.gpu": "", "utilization.gpu": "%"}


def gpus(cfg: dict) -> list[dict]:
    model = cfg.get("gpu_model_key", "H100")
    name, mem = MODELS.get(model, (cfg.get("gpu_model") or model, 81920))
    out = []
    for i in range(int(cfg.get("gpus", 0))):
        h = hashlib.sha256(f"{cfg.get('name')}-{i}".encode()).hexdigest()
        out.append({"index": str(i), "name": name, "driver_version": DRIVER, "memory.total": str(mem),
                    "memory.used": "0", "memory.free": str(mem), "uuid": f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
                    "pci.bus_id": f"00000000:{0x18 + i * 0x10:02X}:00.0", "temperature.gpu": "34",
                    "utilization.gpu": "0", "power.draw": "69.00", "count": str(cfg.get("gpus", 0))})
    return out


def main(argv: list[str]) -> int:
    from .. import faults
    from ..state import host_config
    faults.apply_command_fault(["nvidia-smi"] + argv)
    code, text = render(gpus(host_config()), argv)
    print(text, end="")
    return code


def render(devs: list[dict], argv: list[str]) -> tuple[int, str]:
    """What nvidia-smi prints for these GPUs (also what a container shown only some of them prints)."""
    if not devs:
        return 6, "No devices were found\n"
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    fmt = next((a.split("=", 1)[1] for a in argv if a.startswith("--format=")), "")
    if "-L" in argv or "--list-gpus" in argv:
        return 0, "".join(f"GPU {d['index']}: {d['name']} (UUID: {d['uuid']})\n" for d in devs)
    if query:
        fields = [f.strip() for f in query.split(",")]
        bad = [f for f in fields if f not in devs[0]]
        if bad:
            return 2, f'Field "{bad[0]}" is not a valid field to query.\n\n'
        if "csv" not in fmt:
            return 2, 'Option "--format" is required when using "--query-gpu"\n'
        opts = fmt.split(",")
        out = [] if "noheader" in opts else [", ".join(f"{f} [{UNITS[f]}]" if UNITS.get(f) else f for f in fields)]
        for d in devs:
            out.append(", ".join(d[f] + (f" {UNITS[f]}" if UNITS.get(f) and "nounits" not in opts else "")
                                 for f in fields))
        return 0, "\n".join(out) + "\n"
    out = [f"+{'-' * 89}+", f"| NVIDIA-SMI {DRIVER}              Driver Version: {DRIVER}      CUDA Version: 12.4     |"]
    out += [f"|   {d['index']}  {d['name']:<30} | {d['pci.bus_id']} | {d['memory.used']}MiB / {d['memory.total']}MiB |"
            for d in devs]
    return 0, "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
